"""The run's verdicts on screen (:mod:`analysis.scoring.verdicts`): the Run overview's verdict panel and the bottom line
at the top of each evidence page (with the page findings of :mod:`analysis.scoring.page_findings`), each sentence with its stance in words and colour, its test, the paper's finding
and a link to the page and figure that show it (the run kept in the link)."""
from __future__ import annotations

import dash_bootstrap_components as dbc
from dash import Input, Output, dash_table, dcc, html

from analysis.scoring.claims import model_readings
from analysis.scoring.page_findings import FINDING_KEYS, page_findings
from analysis.scoring.verdicts import AGAINST, FOR, OPEN, Verdict, bottom_line, verdicts

from . import ids
from .pages.claims import claims_of
from .shell import run_link

# the page and figure that show each verdict's analysis
SHOWN_ON = {"degree_null": ("/confounds", "Confounds", "conf-degree"),
            "perturbation_first": ("/perturbation", "Perturbation", "pert-box"),
            "trivial_baselines": ("/perturbation", "Perturbation", "pert-box"),
            "incremental_value": ("/confounds", "Confounds", "conf-incremental"),
            "residualisation": ("/confounds", "Confounds", "conf-residual"),
            "ablation": ("/ablation", "Ablation", "abl-dose")}
# stance -> (badge text, Bootstrap colour): words first, colour second (blue / orange / grey read in colour blindness)
STANCE = {FOR: ("signal", "primary"), AGAINST: ("no signal", "warning"), OPEN: ("open", "secondary")}
CLAIM_HEADERS = {"statement": "the paper's claim", "paper": "in the paper", "verdict": "this run",
                 "reading": "what it says about the model"}


def run_verdicts(store, run_id: str) -> list[Verdict]:
    """The run's verdicts in the confirmatory family."""
    m = store.manifest(run_id)
    registry = store.table(run_id, "statistics_registry")
    tables = {t: store.table(run_id, t) for t in ("residualisation", "ablation_results") if store.has_table(run_id, t)}
    return verdicts(registry, tables, reference=m.reference_names[0])


def verdict_item(v: Verdict, run_id: str, *, link: bool = True) -> html.Li:
    text, colour = STANCE.get(v.stance, ("not testable", "light"))
    path, page, figure = SHOWN_ON.get(v.analysis, (None, None, None))
    see = dcc.Link(f"see {page}", href=run_link(path, run_id) + f"#card-{figure}") if path and link else None
    return html.Li(className="verdict", **{"data-stance": v.stance, "data-key": v.key}, children=[
        dbc.Badge(text, color=colour, className="me-2 verdict-stance",
                  text_color="dark" if colour in ("warning", "light") else None),
        html.B(v.question + " "), html.Span(v.sentence, className="verdict-sentence"),
        html.Div([html.Span(f"Test: {v.test}. " if v.test else ""), html.Span(f"{v.paper} "), see],
                 className="verdict-evidence small text-muted")])


def verdict_panel(store, run_id: str) -> html.Div:
    """Every verdict, the bottom line over them, and the claim map restated as what it says about the model."""
    found = run_verdicts(store, run_id)
    claims, _registry, _twin = claims_of(store, run_id, [])
    readings = model_readings(claims)
    return html.Div(id=ids.OVERVIEW_VERDICTS, className="verdict-panel mb-3", children=[
        html.H4("What this run says"),
        html.P(bottom_line(found), className="lead verdict-bottom-line"),
        html.Ul([verdict_item(v, run_id) for v in found], className="verdict-list"),
        html.H5("The paper's claims, read on this run"),
        html.P("Each headline claim of the paper, what the paper found, this run's verdict in the confirmatory "
               "family, and what that verdict says about the model. The Claims page has every family, the reasons "
               "and the tests.", className="explain"),
        dash_table.DataTable(id=ids.OVERVIEW_CLAIMS, data=readings.to_dict("records"), page_size=10,
                             columns=[{"name": CLAIM_HEADERS[c], "id": c} for c in CLAIM_HEADERS],
                             style_cell={"whiteSpace": "normal", "height": "auto", "textAlign": "left",
                                         "maxWidth": "480px"},
                             style_table={"overflowX": "auto"}),
    ])


def run_page_findings(store, run_id: str) -> list[Verdict]:
    """The findings of the pages the verdict panel does not cover (:mod:`analysis.scoring.page_findings`)."""
    m = store.manifest(run_id)
    tables = {t: store.table(run_id, t) for t in ("head_ranking", "layer_biology", "sae_regulatory")
              if store.has_table(run_id, t)}
    found = page_findings(store.table(run_id, "statistics_registry"), tables, reference=m.reference_names[0])
    return list(found.values())


def page_bottom_line(store, run_id: str, keys: tuple[str, ...]) -> html.Div | None:
    """The verdicts and page findings ``keys`` of the run, for the top of the evidence page that shows them."""
    read = run_page_findings if set(keys) <= set(FINDING_KEYS) else run_verdicts   # only what the page shows
    found = [v for v in read(store, run_id) if v.key in keys]
    if not found:
        return None
    return html.Div(className="verdict-panel page-bottom-line mb-3", children=[
        html.Ul([verdict_item(v, run_id, link=False) for v in found], className="verdict-list mb-0")])


def overall_line(store, run_id: str) -> html.Div:
    """The run's bottom line over its verdicts, linked to the Run overview that lists them (for pages that hold the
    evidence of every verdict at once, as Statistics does)."""
    found = run_verdicts(store, run_id)
    cited = sorted({i for v in found for i in v.test_ids})
    return html.Div(className="verdict-panel page-bottom-line mb-3", children=[
        html.P(bottom_line(found), className="lead verdict-bottom-line mb-1"),
        html.Small([f"The verdicts read {len(cited)} of the tests below; each is listed with its test on the ",
                    dcc.Link("Run overview", href=run_link("/", run_id)), "."], className="text-muted")])


def bottom_line_slot(page: str) -> dcc.Loading:
    """Where an evidence page shows its bottom line (:func:`register_bottom_line`)."""
    return dcc.Loading(html.Div(id=ids.bottom_line(page)))


def register_bottom_line(app, store, page: str, keys: tuple[str, ...]) -> None:
    """Fill page ``page``'s bottom line with the run's verdicts ``keys`` whenever the run changes."""
    @app.callback(Output(ids.bottom_line(page), "children"), Input(ids.RUN_SELECT, "value"))
    def bottom_line_of_page(run_id):
        return page_bottom_line(store, run_id, keys) if run_id else None
