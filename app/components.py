"""Reusable layout pieces: a figure card = graph + the export token of the figure the server drew + an export bar
(every figure exports; a refused export says why next to the buttons)."""
from __future__ import annotations

import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, dash_table, dcc, html, no_update
from dash.dash_table.Format import Format, Scheme, Trim

from analysis.scoring.numbers import SMALLEST_SHOWN_P

from . import ids
from .export import FORMATS, OFFLINE_CONFIG


UNDERFLOW_NOTE = (f"A p or q shown as {SMALLEST_SHOWN_P:.0e} is below it (float underflow, 0 included): read it as "
                  f"< {SMALLEST_SHOWN_P:.0e}.")


def is_probability(name: str) -> bool:
    """A p- or q-value column by its name: ``p``, ``q``, ``p_*``, ``q_*``, ``*_p``, ``*_q``."""
    return name in ("p", "q") or name.startswith(("p_", "q_")) or name.endswith(("_p", "_q"))


def underflow_as_bound(frame: pd.DataFrame, columns) -> pd.DataFrame:
    """``frame`` with probabilities in ``columns`` below :data:`analysis.scoring.numbers.SMALLEST_SHOWN_P` (0
    included: underflow, not a measurement) shown as that bound, never as 0 or 2.2e-308."""
    cols = [c for c in columns if c in frame]
    return frame.assign(**{c: frame[c].mask(frame[c] < SMALLEST_SHOWN_P, SMALLEST_SHOWN_P) for c in cols})


NOT_A_POSITION = ("layer", "head", "draw")   # -1 there means "a layer mean / baseline / no draw", not a position


def _is_position(name: str) -> bool:
    """``layer``, ``head``, ``draw`` and their pairs in a comparison (``layer_a``, ``head_b``)."""
    return name in NOT_A_POSITION or name.rpartition("_")[0] in NOT_A_POSITION


def underflow_note(frame: pd.DataFrame) -> str:
    """:data:`UNDERFLOW_NOTE` when a probability of ``frame`` (by name) is below the smallest shown, else ""."""
    cols = [c for c in frame.columns if is_probability(str(c))]
    values = frame[cols].apply(pd.to_numeric, errors="coerce")
    return UNDERFLOW_NOTE if (values < SMALLEST_SHOWN_P).any(axis=None) else ""


def table_records(frame: pd.DataFrame) -> list[dict]:
    """DataTable rows of ``frame``: probabilities (by name, :func:`is_probability`) below the smallest shown p as
    that bound, -1 in layer / head / draw blank (it marks a row that has none, never a value), NaN blank; numbers
    keep their precision and are shown through the columns' format (:func:`table_column`)."""
    frame = underflow_as_bound(frame, [c for c in frame.columns if is_probability(str(c))])
    frame = frame.astype(object).where(frame.notna(), None)
    for column in filter(_is_position, map(str, frame.columns)):
        frame[column] = frame[column].mask(frame[column].eq(-1), None)
    return frame.to_dict("records")


SIGNIFICANT_DIGITS = 3
EXACT_DIGITS = 6                   # a value beside its baseline: 3 digits would show 217 / 217 for a real change
EXACT_COLUMNS = ("value", "baseline")


def table_column(name: str, numeric: tuple[str, ...] = ()) -> dict:
    """A DataTable column; those in ``numeric`` are numbers shown to 3 significant digits (1.2e-7, not 0; 6 for a
    value and its baseline), still sortable and filterable as numbers, missing values blank."""
    if name in numeric:
        digits = EXACT_DIGITS if name in EXACT_COLUMNS else SIGNIFICANT_DIGITS
        return {"name": name, "id": name, "type": "numeric",
                "format": Format(precision=digits, scheme=Scheme.decimal_or_exponent, trim=Trim.yes)}
    return {"name": name, "id": name}


def float_columns(frame: pd.DataFrame) -> tuple[str, ...]:
    """The columns of ``frame`` holding non-integer numbers (those :func:`table_column` formats)."""
    return tuple(c for c in frame.columns if pd.api.types.is_float_dtype(frame[c]))


def data_table(frame: pd.DataFrame, **kwargs) -> dash_table.DataTable:
    """A sortable DataTable of ``frame`` with the one number format (:func:`table_column`, :func:`table_records`)."""
    numeric = float_columns(frame)
    return dash_table.DataTable(data=table_records(frame), columns=[table_column(c, numeric) for c in frame.columns],
                                sort_action="native", **kwargs)


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
    return html.Div(className="figure-card", id=f"card-{name}", children=[
        dcc.Loading(dcc.Graph(id=ids.graph(name), style=style, config=OFFLINE_CONFIG, **extra)),
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


def live_cells_refusal(settings, manifest, n_cells) -> str | None:
    """Why ``n_cells`` cannot be asked of a live job on this run (at least 2, at most ``max_live_cells`` and the run's
    attention cells), or None."""
    limit = min(settings.max_live_cells, manifest.data.attention_cells or manifest.data.n_cells)
    if not isinstance(n_cells, (int, float)) or not 2 <= n_cells <= limit:
        return f"Refused: choose between 2 and {limit} cells (limit max_live_cells = {settings.max_live_cells})."
    return None


def status_admission(request, jobs):
    """The ``app.jobs.admitted_by`` check of a live job whose outputs are (status, version store), called with the
    click, the request's states and the version: ``request(*states)`` returns (work, cache key) or (None, the
    refusal). A refusal, or a status already cached under the key, is answered at once."""
    def admit(_n_clicks, *states):
        work, key = request(*states[:-1])
        if work is None:
            return key, no_update
        hit = jobs.get(key)
        return None if hit is None else (hit, no_update)
    return admit
