"""Figure export: PNG, SVG and PDF through kaleido (which drives the local Chromium, offline), standalone HTML
with plotly.js embedded, the figure's data as CSV, and a ZIP bundle of all of them plus the run manifest.

The browser never sends a figure to export. Every page callback that draws a figure also *publishes* the figure it
built from the run's own data (:meth:`FigureExports.publish`) and hands the browser only an opaque token; the export
callback looks the token up and renders what the server built. Before rendering, :func:`check_renderable` refuses
anything that could make Chromium read a file or fetch a URL (layout images, image traces, map tiles, any trace type
the app does not draw) and anything past the size bound, so one request cannot hold a thread for minutes."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import zipfile

import dash
import diskcache
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.io.spreadsheet import to_csv

from . import ids
from .view_cache import note_export

FORMATS = ("png", "svg", "pdf", "html", "csv", "zip")
MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf", "html": "text/html",
        "csv": "text/csv", "zip": "application/zip"}
# every trace type the app's figures use (app/figures.py); anything else is refused before rendering
DRAWN_TRACES = frozenset({"bar", "box", "heatmap", "histogram", "scatter", "scattergl", "violin"})
# the plot toolbar (in the app and in exported HTML) offers only what works offline: no "Share chart..." upload to
# Plotly Cloud, no Chart Studio link
OFFLINE_CONFIG = {"displaylogo": False, "showSendToCloud": False, "showEditInChartStudio": False,
                  "modeBarButtonsToRemove": ["sendChartToCloud", "sendDataToCloud", "editInChartStudio"]}
# layout keys whose renderers load resources by URL (images, map tiles and styles)
FETCHING_LAYOUT = ("images", "map", "geo")


class ExportRefused(ValueError):
    """An export that will not be rendered: unknown or expired token, unsafe or oversized figure."""


def _values(array) -> int:
    """Values in one data array as plotly serialises it: a typed array (``{"dtype", "bdata"}``, base64), a numpy
    array, or (nested) lists."""
    if isinstance(array, dict) and "bdata" in array:
        return len(base64.b64decode(array["bdata"])) // np.dtype(array.get("dtype", "f8")).itemsize
    if isinstance(array, np.ndarray):
        return int(array.size)
    if isinstance(array, (list, tuple)):
        return sum(_values(v) if isinstance(v, (list, tuple, np.ndarray)) else 1 for v in array)
    return 0


def figure_points(fig: go.Figure | dict) -> int:
    """Data values drawn: the largest data array of each trace (x, y, z, text, customdata), summed over traces;
    ``fig`` may be the figure's ``to_plotly_json()`` already made."""
    spec = fig if isinstance(fig, dict) else fig.to_plotly_json()
    return sum(max((_values(trace.get(key)) for key in ("x", "y", "z", "text", "customdata")), default=0)
               for trace in spec["data"])


def check_renderable(fig: go.Figure, max_points: int) -> None:
    """Refuse a figure that could read files or reach the network while rendering, or that is too large to render
    in a request (``max_points`` data values)."""
    spec = fig.to_plotly_json()
    kinds = {trace.get("type", "scatter") for trace in spec["data"]}
    if not kinds <= DRAWN_TRACES:
        raise ExportRefused(f"trace types {sorted(kinds - DRAWN_TRACES)} are not drawn by this app")
    fetching = [key for key in FETCHING_LAYOUT if spec["layout"].get(key)]
    if fetching:
        raise ExportRefused(f"layout {fetching} would load resources by URL")
    points = figure_points(spec)
    if points > max_points:
        raise ExportRefused(f"{points:,} values is over the export bound of {max_points:,}; export the CSV, or "
                            f"narrow the figure")


class FigureExports:
    """Server-built figures waiting to be exported, in the app's diskcache (shared with background workers).

    ``publish`` is called by the callback that draws a figure and returns the token the browser keeps; ``lookup``
    returns the figure, its data and the run it was drawn from for a token. Tokens are content hashes, so redrawing
    the same figure reuses its entry; entries expire after ``ttl_s`` seconds. One render at a time (``render``),
    waiting at most ``wait_s``: a second export waits its turn instead of starting another Chromium."""

    def __init__(self, cache: diskcache.Cache, *, max_points: int, ttl_s: int = 6 * 3600, wait_s: float = 60.0):
        self.cache, self.max_points, self.ttl_s, self.wait_s = cache, max_points, ttl_s, wait_s
        self._render_lock = threading.Lock()

    def publish(self, name: str, fig: go.Figure | dict, data) -> str:
        """Store ``fig`` (the figure the callback is returning), ``data`` (DataFrame or records) and the run it was
        drawn from (:func:`drawing_run`) for ``name``."""
        figure_json = go.Figure(fig).to_json()
        data_json = pd.DataFrame(data if data is not None else []).to_json(orient="split", date_format="iso")
        run_id = drawing_run()
        token = hashlib.sha256("\0".join((name, figure_json, data_json, run_id or "")).encode()).hexdigest()[:32]
        self.cache.set(("export", token), (name, figure_json, data_json, run_id), expire=self.ttl_s)
        note_export(token)
        return token

    def drawn(self, name: str, fig: go.Figure | dict, data) -> tuple[go.Figure | dict, str]:
        """``(fig, token)``: a figure card's two outputs (graph figure, export token) for a callback's return."""
        return fig, self.publish(name, fig, data)

    def lookup(self, name: str, token) -> tuple[go.Figure, pd.DataFrame, str | None]:
        """``(figure, data, run_id)`` published under ``token`` for figure ``name``; ``run_id`` is None for a figure
        not drawn from one run (a comparison)."""
        entry = self.cache.get(("export", token)) if isinstance(token, str) else None
        if entry is None or entry[0] != name:
            raise ExportRefused("this figure is not one the server drew (or it expired): redraw it, then export")
        _, figure_json, data_json, run_id = entry
        return go.Figure(json.loads(figure_json)), pd.read_json(io.StringIO(data_json), orient="split"), run_id

    def render(self, fig: go.Figure, data: pd.DataFrame, manifest: dict, name: str, fmt: str) -> tuple[str, bytes]:
        """:func:`export_bytes` after :func:`check_renderable`, one render at a time."""
        if fmt != "csv":
            check_renderable(fig, self.max_points)
        if not self._render_lock.acquire(timeout=self.wait_s):
            raise ExportRefused(f"another export has been rendering for over {self.wait_s:.0f} s; try again")
        try:
            return export_bytes(fig, data, manifest, name, fmt)
        finally:
            self._render_lock.release()


def drawing_run() -> str | None:
    """The run picker's value that the callback now running received, as an input or a state: the run a figure it
    draws shows. None outside a callback, and for a callback that does not read the picker's value (the comparisons
    read its options: their figures span runs)."""
    try:
        items = [*dash.callback_context.inputs_list, *dash.callback_context.states_list]
    except dash.exceptions.MissingCallbackContextException:
        return None
    flat = [i for item in items for i in (item if isinstance(item, list) else [item])]
    return next((i.get("value") for i in flat
                 if i.get("id") == ids.RUN_SELECT and i.get("property") == "value"), None)


def figure_bytes(fig: go.Figure, fmt: str) -> bytes:
    if fmt in ("png", "svg", "pdf"):
        return fig.to_image(format=fmt, scale=2 if fmt == "png" else 1)
    if fmt == "html":
        return fig.to_html(include_plotlyjs=True, full_html=True, config=OFFLINE_CONFIG).encode()
    raise ValueError(f"not a figure format: {fmt}")


def export_bytes(fig: go.Figure, data: pd.DataFrame, manifest: dict, name: str, fmt: str) -> tuple[str, bytes]:
    """(file name, content) of one export of figure ``name``."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "csv":
        return f"{name}.csv", to_csv(data, index=False).encode()
    if fmt != "zip":
        return f"{name}.{fmt}", figure_bytes(fig, fmt)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in ("png", "svg", "pdf", "html"):
            zf.writestr(f"{name}.{f}", figure_bytes(fig, f))
        zf.writestr(f"{name}.csv", to_csv(data, index=False))
        zf.writestr("manifest.json", json.dumps(manifest, indent=1, default=str))
    return f"{name}.zip", buf.getvalue()
