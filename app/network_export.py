"""The Heads page's network export: the head on screen, its layer's head mean or the correlation, as a network file
for decoupler / geneRNIB (TSV), networkx / igraph / Gephi (GraphML) or Cytoscape (.cyjs), each regulator with its
strongest targets (:func:`analysis.scoring.networks.run_network`, :func:`analysis.io.network_files.write_network`).
Nothing is written into the run: the file is made in a temporary directory and sent."""
from __future__ import annotations

import tempfile
from pathlib import Path

import dash_bootstrap_components as dbc
from dash import Input, Output, State, ctx, dcc, html, no_update

from analysis.errors import InputError
from analysis.io.network_files import write_network
from analysis.scoring.networks import DEFAULT_TOP, run_network

from . import ids

FORMATS = {"tsv": ("TSV", "source, target, weight for decoupler and geneRNIB"),
           "graphml": ("GraphML", "networkx, igraph, Gephi, Cytoscape"), "cyjs": ("Cytoscape", "Cytoscape.js JSON")}
MIME = {"tsv": "text/tab-separated-values", "graphml": "application/xml", "cyjs": "application/json"}


def network_bar() -> html.Div:
    """Source picker, targets per regulator and one button per format."""
    return html.Div(className="export-bar network-bar mt-2", children=[
        html.Span("Network of", className="label"),
        dcc.Dropdown(id=ids.NET_SOURCE, clearable=False, style={"width": "200px"}),
        html.Span("top targets per regulator", className="label ms-2"),
        dbc.Input(id=ids.NET_TOP, type="number", value=DEFAULT_TOP, min=1, step=1, size="sm",
                  style={"width": "90px"}),
        *[dbc.Button(label, id=ids.net_button(fmt), size="sm", color="secondary", outline=True, n_clicks=0,
                     title=f"download the network as {label}: {what}", className="ms-1")
          for fmt, (label, what) in FORMATS.items()],
        dcc.Download(id=ids.NET_DOWNLOAD), html.Small(id=ids.NET_STATUS, className="text-danger ms-2")])


def register_network_export(app, store) -> None:
    @app.callback(Output(ids.NET_SOURCE, "options"), Output(ids.NET_SOURCE, "value"), Input(ids.HEADS_SHOWN, "data"))
    def sources(shown):
        """The head on screen, its layer's head mean and the correlation."""
        if not shown:
            return [], None
        head = f"L{shown['layer']}H{shown['head']}"
        return [head, f"L{shown['layer']} mean", "spearman"], head

    @app.callback(Output(ids.NET_DOWNLOAD, "data"), Output(ids.NET_STATUS, "children"),
                  *[Input(ids.net_button(fmt), "n_clicks") for fmt in FORMATS],
                  State(ids.RUN_SELECT, "value"), State(ids.NET_SOURCE, "value"), State(ids.NET_TOP, "value"),
                  prevent_initial_call=True)
    def download(*args):
        run_id, source, top = args[-3:]
        fmt = ctx.triggered_id["fmt"] if isinstance(ctx.triggered_id, dict) else None
        if not (run_id and source and fmt) or not any(args[:-3]):
            return no_update, ""
        if not isinstance(top, (int, float)) or top < 1:
            return no_update, "Refused: keep at least one target per regulator."
        try:
            table = run_network(store.run_dir(run_id), source, top=int(top))
        except InputError as exc:
            return no_update, f"Refused: {exc}."
        name = f"{store.manifest(run_id).short_name}_{source.replace(' ', '_')}_network.{fmt}".replace(" ", "_")
        with tempfile.TemporaryDirectory() as tmp:
            content = write_network(table, Path(tmp) / name).read_bytes()
        return dcc.send_bytes(content, name, type=MIME[fmt]), ""
