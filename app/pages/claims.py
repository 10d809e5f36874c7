"""Claims: the paper's headline claims (Supplementary Note 16.3), each with its verdict for the run on screen under the
Benjamini-Hochberg families, the reason, and the registry tests it rests on
(:mod:`analysis.scoring.claims`). Other runs can be added as contexts, which makes the cross-context claim testable
(replication tests of :mod:`analysis.scoring.replication`). Where the cache holds the run's untrained twin
(``precompute.py --control random-weights``), each verdict stands beside the twin's and the head rankings are set side
by side (:mod:`analysis.scoring.untrained_control`). The whole map downloads as a self-contained HTML report
or as CSV."""
from __future__ import annotations

import html as html_escape

import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, State, ctx, dash_table, dcc, html

from analysis.io.spreadsheet import to_csv
from analysis.scoring.claims import CLAIM_TABLES, claim_map
from analysis.scoring.numbers import effect, probability
from analysis.scoring.registry import FAMILIES
from analysis.scoring.replication import replicate
from analysis.scoring.untrained_control import (ARCHITECTURE, claims_beside_control, ranking_beside_control,
                                               untrained_twin)

from .. import ids
from ..view_cache import not_a_view

PATH, NAME = "/claims", "Claims"
COLOURS = {"supported": "#d4edda", "not supported": "#f8d7da", "not testable": "#e2e3e5"}


def layout(**_):
    return dbc.Container([
        html.H3("Claim-to-evidence map"),
        html.P("Each headline claim of the paper, judged on this run from the statistics registry: supported, not "
               "supported, or not testable here (and why), under the BH families of SN16.1 (confirmatory: "
               "every confirmatory test; all: every registered test; primary per analysis: one test per analysis) "
               "and under the paper's own confirmatory family (paper: the tests SN16.2 gives a p-value, whatever "
               "this project's tier). "
               "A claim whose verdict changes with the family is marked unstable.", className="explain"),
        dbc.Row([dbc.Col([dbc.Label("Other contexts (runs) for the cross-context claim"),
                          dcc.Dropdown(id=ids.CLAIMS_CONTEXTS, multi=True)], md=8),
                 dbc.Col([dbc.Button("Download report (HTML)", id=ids.CLAIMS_REPORT_BUTTON, className="mt-4 me-2",
                                     n_clicks=0),
                          dbc.Button("CSV", id=ids.CLAIMS_CSV_BUTTON, className="mt-4", color="secondary",
                                     outline=True, n_clicks=0),
                          dcc.Download(id=ids.CLAIMS_DOWNLOAD)], md=4)]),
        html.Div(id=ids.CLAIMS_CONTROL, className="explain my-2"),
        dash_table.DataTable(id=ids.CLAIMS_TABLE, style_table={"overflowX": "auto"}, page_size=20,
                             style_cell={"whiteSpace": "normal", "height": "auto", "textAlign": "left",
                                         "maxWidth": "520px"},
                             style_data_conditional=[{"if": {"filter_query": f'{{{f}}} = "{v}"', "column_id": f},
                                                      "backgroundColor": c} for f in FAMILIES
                                                     for v, c in COLOURS.items()],
                             columns=[{"name": c, "id": c} for c in ("claim", "section", *FAMILIES, "stable",
                                                                     "untrained twin", "reading", "reason",
                                                                     "tests")]),
    ], fluid=True)


def evidence(store, run_id: str, contexts: list[str]) -> tuple[pd.DataFrame, dict]:
    """The run's registry (plus the replication tests over it and ``contexts``) and the tables the claims read."""
    registry = store.table(run_id, "statistics_registry")
    tables = {t: store.table(run_id, t) for t in CLAIM_TABLES if store.has_table(run_id, t)}
    runs = {store.manifest(r).short_name: ctx for r in [run_id, *contexts]
            if (ctx := store.replication_context(r)) is not None}
    if len(runs) >= 2:
        _, tests = replicate(runs)
        registry = pd.concat([registry, tests], ignore_index=True)
    return registry, tables


def heads(store, run_id: str) -> int:
    m = store.manifest(run_id)
    return m.model.n_layers * m.model.n_heads


def claims_of(store, run_id: str, contexts: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, object]:
    """(claim map, registry, untrained twin's manifest or None): the map carries ``control_verdict`` and ``reading``
    (:func:`analysis.scoring.untrained_control.claims_beside_control`) when the cache holds the run's twin."""
    registry, tables = evidence(store, run_id, contexts)
    claims = claim_map(registry, tables, n_heads=heads(store, run_id))
    twin = untrained_twin(store.manifest(run_id), store.runs()[0])
    if twin is not None:
        twin_registry, twin_tables = evidence(store, twin.run_id, [])
        claims = claims_beside_control(claims, claim_map(twin_registry, twin_tables, n_heads=heads(store, twin.run_id)))
    return claims, registry, twin


def control_note(store, run_id: str, claims: pd.DataFrame, twin) -> str:
    """The untrained-control line: which twin, its head ranking beside the run's, and the claims it shares."""
    m = store.manifest(run_id)
    if m.config.model.random_init:
        return ("This run has random weights: it is an untrained control (or a scale check), so any claim it "
                "supports is architecture or data, not learning.")
    if twin is None:
        return ("No untrained twin of this run in the cache: precompute with --control random-weights to set every "
                "verdict beside the same architecture with random weights on the same cells.")
    reference = m.reference_names[0]
    rank = ranking_beside_control(store.ranking(run_id), store.ranking(twin.run_id), reference=reference)
    (layer, head), (c_layer, c_head) = rank["best_head"], rank["control_best_head"]
    shared = claims[(claims["family"] == "confirmatory") & (claims["reading"] == ARCHITECTURE)]
    return (f"Untrained twin {twin.run_id}: best head on {reference} L{layer}H{head} AUROC {rank['best_value']:.3f} "
            f"here, L{c_layer}H{c_head} {rank['control_best_value']:.3f} in the twin; "
            f"{rank['share_above_control_best']:.0%} of heads beat the twin's best, and per-head AUROCs correlate "
            f"rho = {rank['spearman_heads']:.2f} between the two ({rank['n_heads']} heads). "
            + (f"Supported by the twin too (architecture or data, not learning): {', '.join(shared['claim'])}."
               if len(shared) else "No claim the run supports is supported by the twin."))


def wide(claims: pd.DataFrame) -> pd.DataFrame:
    """One row per claim: the verdict in each family, stability, the untrained twin's verdict and reading (when
    present), and the confirmatory family's reason and tests."""
    verdicts = claims.pivot(index="claim", columns="family", values="verdict")
    first = claims[claims["family"] == "confirmatory"].set_index("claim")
    if "control_verdict" in first:
        first = first.rename(columns={"control_verdict": "untrained twin"})
    twin_columns = [c for c in ("untrained twin", "reading") if c in first]
    out = first[["statement", "section", "reason", "tests", "stable", *twin_columns]].join(verdicts)
    out = out.loc[list(dict.fromkeys(claims["claim"]))].reset_index()
    out["claim"] = out["statement"]
    out["stable"] = out["stable"].map({True: "stable", False: "UNSTABLE"})
    return out.drop(columns="statement")


def report_html(manifest, claims: pd.DataFrame, registry: pd.DataFrame) -> str:
    """A self-contained HTML report: the run, the claim map (every family) and every registry test it cites."""
    esc = html_escape.escape
    rows = []
    table = wide(claims)
    twin = [c for c in ("untrained twin", "reading") if c in table]
    for r in table.to_dict("records"):
        cells = "".join(f'<td style="background:{COLOURS[r[f]]}">{esc(r[f])}</td>' for f in FAMILIES)
        twin_cells = "".join(f"<td>{esc(str(r[c]))}</td>" for c in twin)
        rows.append(f"<tr><td>{esc(r['claim'])}</td><td>{esc(r['section'])}</td>{cells}<td>{esc(r['stable'])}</td>"
                    f"{twin_cells}<td>{esc(r['reason'])}</td></tr>")
    cited = {t for ts in claims["tests"] for t in ts.split("; ") if t}
    tests = registry[registry["test_id"].isin(cited)]
    test_rows = "".join(
        f"<tr><td>{esc(t.test_id)}</td><td>{esc(t.test)}</td><td>{probability(t.p)}</td><td>{effect(t.effect)} "
        f"({esc(t.effect_name)})</td><td>{t.n}</td>" + "".join(f"<td>{probability(getattr(t, 'q_' + f))}</td>" for f in FAMILIES)
        + "</tr>" for t in tests.itertuples())
    head = "".join(f"<th>{f}</th>" for f in FAMILIES)
    q_head = "".join(f"<th>q ({f})</th>" for f in FAMILIES)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Claim map: {esc(manifest.run_id)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #bbb;padding:4px 8px;vertical-align:top;font-size:13px}}</style></head><body>
<h1>Claim-to-evidence map</h1>
<p>{esc(manifest.title)}<br>Run {esc(manifest.run_id)}, config hash {esc(manifest.config_hash[:12])}; model
{esc(manifest.model.name)} ({manifest.model.n_layers} layers x {manifest.model.n_heads} heads);
{esc(manifest.data.cells_line)}.
Verdicts under the Benjamini-Hochberg families of the paper's Supplementary Note 16.1 and the paper's own confirmatory family of Supplementary Note 16.2 (alpha 0.05).</p>
<table><tr><th>claim</th><th>section</th>{head}<th>stable</th>{"".join(f"<th>{c}</th>" for c in twin)}
<th>reason (confirmatory family)</th></tr>
{''.join(rows)}</table>
<h2>Registry tests cited</h2>
<table><tr><th>test</th><th>method</th><th>p</th><th>effect</th><th>n</th>{q_head}</tr>
{test_rows}</table></body></html>"""


def register(app, store, settings, jobs, exports):
    @app.callback(Output(ids.CLAIMS_CONTEXTS, "options"), Input(ids.RUN_SELECT, "value"))
    def contexts(run_id):
        manifests, _ = store.runs()
        return [{"label": m.title, "value": m.run_id} for m in manifests if m.run_id != run_id]

    @app.callback(Output(ids.CLAIMS_TABLE, "data"), Output(ids.CLAIMS_CONTROL, "children"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.CLAIMS_CONTEXTS, "value"))
    def show(run_id, others):
        if not run_id:
            return [], ""
        claims, _, twin = claims_of(store, run_id, others or [])
        return wide(claims).to_dict("records"), control_note(store, run_id, claims, twin)

    @app.callback(Output(ids.CLAIMS_DOWNLOAD, "data"), Input(ids.CLAIMS_REPORT_BUTTON, "n_clicks"),
                  Input(ids.CLAIMS_CSV_BUTTON, "n_clicks"), State(ids.RUN_SELECT, "value"),
                  State(ids.CLAIMS_CONTEXTS, "value"), prevent_initial_call=True)
    @not_a_view
    def download(report_clicks, csv_clicks, run_id, others):
        if not run_id or not (report_clicks or csv_clicks):
            return None
        claims, registry, _ = claims_of(store, run_id, others or [])
        m = store.manifest(run_id)
        if ctx.triggered_id == ids.CLAIMS_CSV_BUTTON:
            return dcc.send_string(to_csv(claims, index=False), f"claims_{m.family}_{run_id}.csv")
        return dcc.send_string(report_html(m, claims, registry), f"claims_{m.family}_{run_id}.html")
