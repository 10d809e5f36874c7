"""The frame around every page: the navigation bar (collapsing behind a toggler below 1200 px), the context bar (run
picker, gene search, the run's header) and the run in the URL.

The run on screen lives in the page's query string (``?run=<run id>``), so a reload, a bookmark or a shared link opens
the run it was made on, and two tabs can hold two runs. One callback keeps the picker and the URL in step, through a
location component of its own that writes history without re-rendering the page (:func:`register`); the navigation
links and the gene search carry the run; the browser tab names the page and the run."""
from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

import dash
import dash_bootstrap_components as dbc
from dash import ALL, ClientsideFunction, Input, Output, State, ctx, dcc, html, no_update, set_props

from . import ids
from .data import ArtifactStore
from .settings import AppSettings


def query(search: str | None) -> dict[str, str]:
    """The query string ``?a=1&b=2`` as a dict (the last value of a repeated key)."""
    return dict(parse_qsl((search or "").lstrip("?"), keep_blank_values=False))


def with_query(search: str | None, **params) -> str:
    """``search`` with ``params`` set (None removes one), keys in their first order; ``""`` when nothing is left."""
    merged = {**query(search), **params}
    kept = {k: v for k, v in merged.items() if v is not None}
    return f"?{urlencode(kept)}" if kept else ""


def run_link(path: str, run_id: str | None, **params) -> str:
    """A link to page ``path`` on run ``run_id`` (and any other query ``params``)."""
    return path + with_query("", run=run_id, **params)


def layout(store: ArtifactStore, settings: AppSettings, pages) -> html.Div:
    """The app's frame around ``dash.page_container``; ``pages``: the page modules linked in the navigation bar."""
    runs, skipped = store.runs()
    options = [{"label": m.title, "value": m.run_id} for m in runs]
    initial = settings.run_id or (runs[0].run_id if runs else None)
    warning = dbc.Alert([html.B(f"{len(skipped)} run(s) in the cache cannot be opened and are not listed: "),
                         "; ".join(skipped)], color="warning", className="mx-3") if skipped else None
    nav = dbc.Navbar(dbc.Container([
        dbc.NavbarBrand("scFM attention explorer", href=run_link("/", initial), className="me-3"),
        dbc.NavbarToggler(id=ids.NAV_TOGGLE, n_clicks=0),
        dbc.Collapse(dbc.Nav([dbc.NavLink(p.NAME, href=run_link(p.PATH, initial), id=ids.nav_link(p.PATH),
                                          active="exact") for p in pages], navbar=True, className="flex-wrap"),
                     id=ids.NAV_COLLAPSE, is_open=False, navbar=True),
    ], fluid=True), color="dark", dark=True, expand="xl", className="mb-2")
    context = html.Div(className="context-bar mx-3 mb-2", children=[
        html.Div(dcc.Dropdown(id=ids.RUN_SELECT, options=options, value=initial, clearable=False,
                              placeholder="no runs in cache"), className="run-picker"),
        html.Div(dcc.Dropdown(id=ids.GENE_SEARCH, placeholder="find a gene...", clearable=True),
                 className="gene-search"),
    ])
    return html.Div([nav, context, warning, dcc.Location(id=ids.URL, refresh="callback-nav"),
                     dcc.Store(id=ids.SELECTED_HEAD, storage_type="session"), html.Div(id=ids.PAGE_TITLE, hidden=True),
                     dcc.Location(id=ids.RUN_URL, refresh=False),
                     html.Div(id=ids.RUN_HEADER, className="run-header mx-3 mb-2"),
                     html.Div(id=ids.APP_ERROR, className="mx-3"), dash.page_container])


def register(app: dash.Dash) -> None:
    @app.callback(Output(ids.RUN_URL, "search"), Output(ids.RUN_SELECT, "value"),
                  Input(ids.RUN_URL, "search"), Input(ids.RUN_SELECT, "value"), State(ids.RUN_SELECT, "options"))
    def run_in_url(search, run_id, options):
        """Keep the picker and the URL's ``run`` in step. A run picked is written to the URL (a new history entry, so
        Back returns to the run before; the page is not re-rendered, its views follow the picker). A URL's run, on
        load, on a link and on Back / Forward, sets the picker; an unknown one is named. A URL without a run is left
        as it is (writing one would add a history entry that Back can never leave)."""
        wanted = query(search).get("run")
        if ctx.triggered_id == ids.RUN_SELECT:
            return (with_query(search, run=run_id) if run_id and wanted != run_id else no_update), no_update
        if not wanted or wanted == run_id:
            return no_update, no_update
        if wanted not in {o["value"] for o in options or []}:
            set_props(ids.APP_ERROR, {"children": dbc.Alert(
                f"The link names run {wanted!r}, which is not in this cache; showing {run_id!r} instead. "
                "Pick a run above.", color="warning", dismissable=True)})
            return with_query(search, run=run_id), no_update       # the link now names the run on screen
        return no_update, wanted

    @app.callback(Output(ids.nav_link(ALL), "href"), Input(ids.RUN_SELECT, "value"),
                  State(ids.nav_link(ALL), "id"))
    def links_carry_the_run(run_id, link_ids):
        return [run_link(i["path"], run_id) for i in link_ids]

    @app.callback(Output(ids.NAV_COLLAPSE, "is_open"), Input(ids.NAV_TOGGLE, "n_clicks"),
                  State(ids.NAV_COLLAPSE, "is_open"), prevent_initial_call=True)
    def toggle_navigation(_n, is_open):
        return not is_open

    app.clientside_callback(ClientsideFunction("explorer", "pageTitle"), Output(ids.PAGE_TITLE, "children"),
                            Input("_pages_store", "data"), Input(ids.RUN_SELECT, "value"),
                            State(ids.RUN_SELECT, "options"))
