"""Export guards (app.export): figures that could read files or reach the network while Chromium renders them are
refused, as are oversized ones; only figures the server published can be looked up, by the name they were drawn
for; the value count matches a hand count in every serialisation plotly uses."""
from __future__ import annotations

import json

import diskcache
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from app.export import ExportRefused, FigureExports, check_renderable, figure_points


def _figure() -> go.Figure:
    fig = go.Figure(go.Heatmap(z=np.arange(12.0).reshape(3, 4)))
    fig.add_scatter(x=list(range(5)), y=[[1], [2], [3], [4], [5]])
    fig.add_bar(x=np.arange(7), y=np.ones(7))
    return fig


def test_value_count_by_hand_in_each_serialisation():
    fig = _figure()
    hand = 12 + 5 + 7
    assert figure_points(fig) == hand
    assert figure_points(go.Figure(json.loads(fig.to_json()))) == hand     # typed arrays (base64 bdata)
    assert figure_points(go.Figure(fig.to_dict())) == hand


@pytest.mark.parametrize("layout", [
    {"images": [{"source": "file:///etc/hostname"}]},
    {"images": [{"source": "http://127.0.0.1:8050/_dash-layout"}]},
    {"map": {"style": "http://127.0.0.1/style.json"}},
    {"geo": {"showland": True}},
])
def test_resources_by_url_are_refused(layout):
    fig = go.Figure(go.Scatter(x=[0], y=[0]), layout=layout)
    with pytest.raises(ExportRefused, match="by URL"):
        check_renderable(fig, max_points=10)


@pytest.mark.parametrize("trace", [{"type": "image", "source": "file:///etc/hostname"},
                                   {"type": "scattermap", "lat": [0], "lon": [0]}])
def test_traces_the_app_never_draws_are_refused(trace):
    with pytest.raises(ExportRefused, match="not drawn by this app"):
        check_renderable(go.Figure({"data": [trace]}), max_points=10)


def test_size_bound():
    check_renderable(_figure(), max_points=24)
    with pytest.raises(ExportRefused, match="24 values is over the export bound of 23"):
        check_renderable(_figure(), max_points=23)


def test_only_published_figures_are_found(tmp_path):
    exports = FigureExports(diskcache.Cache(str(tmp_path / "dc")), max_points=100)
    data = pd.DataFrame({"gene": ["A", "B"], "score": [0.5, 0.25]})
    token = exports.publish("heads-heatmap", _figure(), data)
    fig, back, run_id = exports.lookup("heads-heatmap", token)
    assert figure_points(fig) == 24 and run_id is None                     # published outside a callback
    pd.testing.assert_frame_equal(back, data)
    assert exports.publish("heads-heatmap", _figure(), data) == token        # content-addressed
    for name, tok in (("heads-gene-gene", token), ("heads-heatmap", "0" * 32), ("heads-heatmap", None),
                      ("heads-heatmap", {"data": []})):
        with pytest.raises(ExportRefused, match="not one the server drew"):
            exports.lookup(name, tok)
    name, content = exports.render(fig, back, {}, "x", "csv")
    assert name == "x.csv" and content.decode().splitlines() == ["gene,score", "A,0.5", "B,0.25"]
    with pytest.raises(ExportRefused, match="export bound"):
        FigureExports(exports.cache, max_points=5).render(fig, back, {}, "x", "png")


def test_exported_html_offers_no_cloud_upload():
    from app.export import export_bytes
    _, content = export_bytes(_figure(), pd.DataFrame(), {}, "x", "html")
    text = content.decode()
    assert '"showSendToCloud": false' in text and '"sendChartToCloud"' in text and '"displaylogo": false' in text
