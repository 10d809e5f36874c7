"""create_app(settings) -> Dash. Pages are registered explicitly (no pages folder scan); every page's
callbacks close over one read-only ArtifactStore. The export callback is generic over every figure card: it renders
the figure the server published for the card (app.export), never one sent by the browser. Requests for a Host the
server was not started for are refused (app.security)."""
from __future__ import annotations

import logging

import dash
import dash_bootstrap_components as dbc
from dash import ALL, MATCH, Dash, Input, Output, State, ctx, dcc, html, no_update, set_props
from threadpoolctl import threadpool_limits

from . import ids, shell
from .data import ArtifactStore, RunNotFound
from .export import MIME, ExportRefused, FigureExports
from .job_cache import open_job_cache
from .jobs import ForkSafeDiskcacheManager
from .pages import (ablation, claims, compare, confounds, cssi, features, gene, heads, layers, overview, perturbation,
                    statistics)
from .security import bound_request_size, refuse_foreign_hosts
from .settings import PROJECT_ROOT, AppSettings
from .timing import report_server_time
from .view_cache import JobResults, ViewCache, not_a_view

log = logging.getLogger("app")
PAGES = (overview, heads, layers, ablation, cssi, perturbation, confounds, features, compare, claims, statistics,
         gene)


def show_error(error: Exception) -> None:
    """Every callback's failure on screen, not only in the server log (Dash's ``on_error``): a run that cannot be
    opened or a damaged file of a run says which and what to do; anything else names the error."""
    log.exception("callback failed", exc_info=error)
    text = str(error) if isinstance(error, RunNotFound) else (
        f"This view failed ({type(error).__name__}: {error}); the server log has the details.")
    set_props(ids.APP_ERROR, {"children": dbc.Alert(text, color="danger", dismissable=True)})


def _protocol_badge(m) -> list:
    """Which of the paper's protocols the run follows, with each deviation listed (none: nothing shown)."""
    name, rows = m.protocol["name"], m.protocol["deviations"]
    if name == "none":
        return []
    items = [html.Li(f"{r['setting']}: paper {r['paper']}, this run {r['run']} ({r['source']})") for r in rows]
    return [dbc.Badge(f"protocol {name}" + (f" - {len(rows)} deviation(s)" if rows else " - exact"),
                      color="warning" if rows else "success", className="me-2 protocol-badge"),
            html.Details([html.Summary("deviations from the paper"), html.Ul(items)],
                         className="protocol-deviations small") if rows else None]


def create_app(settings: AppSettings | None = None) -> Dash:
    settings = settings or AppSettings()
    # Background jobs are forked from this multi-threaded server. A fork while another request thread is inside
    # OpenBLAS's multi-threaded GEMM leaves its level-3 lock held in the child, which then hangs at its first
    # matrix product (seen: a CSSI level job stuck in dgemm_thread_nn). Single-threaded BLAS never takes it.
    threadpool_limits(1, user_api="blas")
    store = ArtifactStore(settings.cache_dir)
    jobs = open_job_cache(settings.cache_dir, size_limit=settings.diskcache_size_limit)
    manager = ForkSafeDiskcacheManager(jobs, max_jobs=settings.max_jobs, max_queued_jobs=settings.max_queued_jobs,
                                       abandon_after_s=settings.abandon_after_s)
    app = Dash(__name__, use_pages=True, pages_folder="", assets_folder=str(PROJECT_ROOT / "assets"),
               suppress_callback_exceptions=True, title="scFM attention explorer", update_title=None,
               background_callback_manager=manager, on_error=show_error)
    exports = FigureExports(jobs, max_points=settings.export_max_points)
    if settings.view_cache_ttl_s >= exports.ttl_s:
        raise ValueError(f"view_cache_ttl_s ({settings.view_cache_ttl_s:g} s) must be under the export tokens' "
                         f"lifetime ({exports.ttl_s} s): a cached view would hand out tokens that expire")
    results = JobResults(jobs)   # pages read and write job results through it, so cached views follow them
    report_server_time(app.server)
    refuse_foreign_hosts(app.server, settings.allowed_hosts())
    bound_request_size(app.server, settings.max_request_mib * 1024 ** 2)
    if settings.view_cache_mib > 0:
        ViewCache(results, store.root, max_bytes=settings.view_cache_mib * 1024 ** 2,
                  ttl_s=settings.view_cache_ttl_s).install(app)
    for page in PAGES:
        dash.register_page(page.__name__, path=page.PATH, name=page.NAME, title=page.NAME, layout=page.layout)
        page.register(app, store, settings, results, exports)
    app.layout = lambda: shell.layout(store, settings, [p for p in PAGES if p is not gene])
    shell.register(app)

    @app.callback(Output(ids.RUN_HEADER, "children"), Input(ids.RUN_SELECT, "value"))
    def run_header(run_id):
        """Every page names the model family and model of the run on screen."""
        if not run_id:
            return None
        m = store.manifest(run_id)
        return [dbc.Badge(m.family, color="info", className="me-2 family-badge"), *_protocol_badge(m),
                html.Span(f"{m.model.name} - {m.model.n_layers} layers x {m.model.n_heads} heads - "
                          f"{m.data.cells_line} - universe: {m.data.universe} ({m.data.universe_genes} genes) - "
                          f"run {m.run_id}")]

    @app.callback(Output(ids.download(MATCH), "data"), Output(ids.export_status(MATCH), "children"),
                  Input(ids.export_button(MATCH, ALL), "n_clicks"), State(ids.figdata(MATCH), "data"),
                  prevent_initial_call=True)
    @not_a_view
    def export(_clicks, token):
        """Render the figure the server drew for this card (named by its token, never sent by the browser)."""
        trigger = ctx.triggered_id
        if not trigger or not any(_clicks) or trigger.get("fmt") not in MIME:
            return no_update, no_update
        try:
            figure, data, run_id = exports.lookup(trigger["figure"], token)
            # a figure of one run names the run it was drawn from (its family, in the title and file name), whatever
            # the picker shows now; a comparison's data names every run it shows
            manifest = store.manifest(run_id) if run_id else None
            if manifest is not None:
                title = figure.layout.title.text or ""
                figure.update_layout(title={"text": f"{title}<br><sup>{manifest.title}</sup>" if title
                                            else manifest.title})
            stem = f"{trigger['figure']}_{manifest.family}_{run_id}" if manifest else trigger["figure"]
            name, content = exports.render(figure, data, manifest.to_dict() if manifest else {}, stem, trigger["fmt"])
        except (ExportRefused, KeyError, ValueError) as exc:
            return no_update, f"Export refused: {exc}"
        return dcc.send_bytes(content, name, type=MIME[trigger["fmt"]]), ""

    manager.start_launcher()   # every background callback is registered and no request has arrived (app.jobs)
    return app
