"""Reusable layout pieces: a figure card = graph + the export token of the figure the server drew + an export bar
(every figure exports; a refused export says why next to the buttons)."""
from __future__ import annotations

import dash_bootstrap_components as dbc
from dash import Input, Output, dcc, html

from . import ids
from .export import FORMATS


def placeholder_figure(message: str) -> dict:
    """A figure with no axes that says what will be drawn, instead of an empty frame with bare axes."""
    return {"data": [], "layout": {"xaxis": {"visible": False}, "yaxis": {"visible": False}, "height": 160,
                                   "annotations": [{"text": message, "showarrow": False, "font": {"size": 14}}]}}


def figure_card(name: str, explanation: str = "", height: int | None = None, placeholder: str | None = None
                ) -> html.Div:
    """A graph with its export bar (PNG, SVG, PDF, CSV, ZIP) and an explanation; ``placeholder``: the message shown
    until the first figure is drawn."""
    style = {"height": f"{height}px"} if height else None
    extra = {"figure": placeholder_figure(placeholder)} if placeholder else {}
    return html.Div(className="figure-card", children=[
        dcc.Loading(dcc.Graph(id=ids.graph(name), style=style, config={"displaylogo": False}, **extra)),
        dcc.Store(id=ids.figdata(name)),
        html.Div(className="export-bar", children=[html.Span("Export", className="label")] + [
            dbc.Button(fmt.upper(), id=ids.export_button(name, fmt), size="sm", color="secondary", outline=True,
                       n_clicks=0, title=f"download this figure as {fmt.upper()}" if fmt not in ("csv", "zip")
                       else ("the data behind this figure" if fmt == "csv" else "all formats + data + run manifest"))
            for fmt in FORMATS] + [dcc.Download(id=ids.download(name)),
                                   html.Small(id=ids.export_status(name), className="export-status text-danger ms-2")]),
        html.P(explanation, className="explain mt-2 mb-0") if explanation else None,
    ])


def background_job(run_button: str | None, cancel_button: str, progress_bar: str) -> dict:
    """Keyword arguments of a Dash background callback started by ``run_button`` (None: started by its inputs
    alone): the buttons are disabled / enabled while it runs, ``cancel_button`` cancels it, and
    ``set_progress((percent, label))`` drives ``progress_bar``."""
    running = [(Output(cancel_button, "disabled"), False, True)]
    if run_button is not None:
        running.insert(0, (Output(run_button, "disabled"), True, False))
    return {"background": True, "prevent_initial_call": True, "running": running,
            "cancel": [Input(cancel_button, "n_clicks")],
            "progress": [Output(progress_bar, "value"), Output(progress_bar, "label")]}
