"""CSSI: reference recovery against the number of cell-state strata (slider), with the pooled score and the
random-strata null band; cells coloured by stratum; each stratum's top edges; the synthetic validation.

Grid positions read precomputed tables. A position between grid points is drawn at once from the fine clusters
(embedding, per-stratum edges); its CSSI score and nulls are computed by a background job (progress, cancel) and
cached per run, reference, direction and number of strata, then joined to the curve in green."""
from __future__ import annotations

import dataclasses

import dash_bootstrap_components as dbc
import pandas as pd
from dash import ClientsideFunction, Input, Output, State, ctx, dash_table, dcc, html, no_update

from analysis.scoring.cssi import AGGREGATIONS
from analysis.scoring.cssi_levels import score_level, stratum_top_edges, synthetic_summary
from analysis.scoring.numbers import probability
from analysis.io.references import ReferenceNetwork
from analysis.scoring.strata import add_level

from .. import ids
from ..components import background_job, figure_card, float_columns, table_column, table_records
from ..jobs import admitted_by
from ..figures import (CSSI_AGGREGATIONS, composition_plot, cssi_curve, cssi_embedding, cssi_stratum_edges,
                       cssi_synthetic, scaling_curves)
from ..verdict_view import bottom_line_slot, register_bottom_line

PATH, NAME = "/cssi", "CSSI"
MAX_STRATA = 20
N_TOP_EDGES = 8


def live_key(run_id: str, reference: str, direction: str, n_strata: int) -> tuple:
    return ("cssi-level", run_id, reference, direction, int(n_strata))


def linked_strata(strata) -> int | None:
    """The number of strata of a link's ``?strata=7``, or None when it is not a whole number (a link is text from
    anywhere: nothing of it is evaluated)."""
    return int(strata) if isinstance(strata, str) and strata.isdigit() and len(strata) < 4 else None


def layout(strata=None, **_):
    return dbc.Container([
        dcc.Store(id=ids.CSSI_LINK, data=linked_strata(strata)), html.Div(id=ids.CSSI_URL_STRATA, hidden=True),
        html.H3("Cell-State Stratified Interpretability"),
        bottom_line_slot("cssi"),
        html.Div(id=ids.CSSI_NOTE, className="explain mb-2"),
        dbc.Row([
            dbc.Col([dbc.Label("Reference"), dcc.Dropdown(id=ids.CSSI_REFERENCE, clearable=False)], md=3),
            dbc.Col([dbc.Label("Direction"), dcc.Dropdown(id=ids.CSSI_DIRECTION, clearable=False)], md=2),
            dbc.Col([dbc.Label("Edge source"), dcc.Dropdown(id=ids.CSSI_SITE, clearable=False)], md=2),
            dbc.Col([dbc.Label("Aggregation across strata"), dbc.RadioItems(
                id=ids.CSSI_AGGREGATION, value="max", inline=True,
                options=[{"label": a, "value": a} for a in AGGREGATIONS])], md=3),
            dbc.Col([dbc.Label("Metric"), dbc.RadioItems(id=ids.CSSI_METRIC, value="auroc", inline=True, options=[
                {"label": "AUROC", "value": "auroc"}, {"label": "top-k F1", "value": "f1"}])], md=2),
        ], className="mb-2"),
        dbc.Row([
            dbc.Col([dbc.Label("Number of cell-state strata"),
                     dcc.Slider(id=ids.CSSI_SLIDER, min=2, max=MAX_STRATA, step=1, value=5)], md=7),
            dbc.Col([dbc.Progress(id=ids.CSSI_PROGRESS, value=0, className="mt-4", style={"height": "22px"})], md=3),
            dbc.Col(dbc.Button("Cancel", id=ids.CSSI_CANCEL, color="secondary", className="mt-4", disabled=True),
                    md=2),
        ]),
        html.Div(id=ids.CSSI_STATUS, className="explain my-2"),
        html.Div(id=ids.CSSI_JOB_STATUS, className="explain mb-2"),
        dcc.Interval(id=ids.CSSI_POLL, interval=1000, disabled=True),
        figure_card("cssi-curve"),
        dbc.Row([dbc.Col(figure_card("cssi-embedding"), lg=6), dbc.Col(figure_card("cssi-edges"), lg=6)]),
        html.H5("Recovery against the number of cells (Supplementary Note 1)", className="mt-3"),
        html.P("Why stratify: pooled attention's top-k recovery can fall as cells (and with them cell states) are "
               "added, while AUROC rises. Subsamples are unions of the random groups of CSSI's extraction pass, so "
               "this costs no forward pass; each seed adds groups in its own random order. The band is the "
               "group-bootstrap 95% CI of AUROC. Below: correlation edges under controlled composition.",
               className="explain"),
        html.Div(id=ids.CSSI_SCALING_NOTE, className="explain mb-2"),
        figure_card("cssi-scaling"),
        figure_card("cssi-composition"),
        html.H5("Synthetic validation (Supplementary Note 11.1)", className="mt-3"),
        figure_card("cssi-synthetic"),
        dash_table.DataTable(id=ids.CSSI_SYNTHETIC_TABLE, page_size=12, sort_action="native",
                             style_table={"overflowX": "auto"}),
    ], fluid=True)


def curve_rows(store, jobs, run_id: str, reference: str, direction: str) -> pd.DataFrame:
    """Precomputed grid rows plus any levels computed in the app for this run, reference and direction."""
    curve = store.table(run_id, "cssi_curve")
    grid = curve[(curve["reference"] == reference) & (curve["direction"] == direction)].assign(source="grid")
    live = [pd.DataFrame(rows).assign(source="live") for k in range(2, MAX_STRATA + 1)
            if (rows := jobs.get(live_key(run_id, reference, direction, k))) is not None]
    return pd.concat([grid, *live], ignore_index=True)


def level_summary(r: pd.Series, n_strata: int, aggregation: str, metric: str) -> str:
    """One line on a scored level: CSSI vs pooled, the random-strata band and the p-values."""
    where = "computed here" if r["source"] == "live" else "precomputed"
    text = (f"{n_strata} strata ({int(r['n_found'])} found, Leiden resolution {r['resolution']:.3g}; {where}): "
            f"{CSSI_AGGREGATIONS[aggregation]} {metric.upper()} {r['value']:.4f} vs pooled {r['pooled']:.4f} "
            f"(delta {r['delta']:+.4f}); random-strata null {r['null_mean']:.4f} [{r['null_low']:.4f}, "
            f"{r['null_high']:.4f}], p = {probability(r['p_random_strata'])}")
    if metric == "auroc":
        text += (f"; label-shuffle p = {probability(r['p_label_shuffle'])}; gene-permuted reference mean "
                 f"{r['gene_permuted_mean']:.4f}, p = {probability(r['p_gene_permuted'])}")
    return text


def scaling_note(tests: pd.DataFrame, reference: str) -> dash_table.DataTable:
    """The registry's scaling and controlled-composition tests for one reference (effect, p, q)."""
    sel = tests[tests["analysis"].isin(["scaling", "controlled_composition"])
                & tests["hypothesis"].str.contains(f"({reference})", regex=False)]
    cols = ["hypothesis", "test", "effect_name", "effect", "n", "p", "q"]
    return dash_table.DataTable(data=table_records(sel[cols]), page_size=8,
                                sort_action="native", columns=[table_column(c, ("effect", "p", "q")) for c in cols],
                                style_table={"overflowX": "auto"})


def agreement_sentence(agreement: pd.DataFrame, curve: pd.DataFrame, reference: str, readout_layer: int) -> str:
    """The read-out layer's sparse GRN (each source's top-100 targets, SN1) across cell counts: its F1 and how much
    the seeds' GRNs agree (mean pairwise Jaccard), smallest and largest count."""
    sel = agreement[(agreement["reference"] == reference) & (agreement["edge_type"] == "attention_layer_mean")
                    & (agreement["layer"] == readout_layer)].sort_values("n_units")
    f1 = curve[curve["metric"].str.startswith("f1_per_source_") & (curve["edge_type"] == "attention_layer_mean")
               & (curve["layer"] == readout_layer)].groupby("n_units")["value"].mean()
    if sel.empty or f1.empty:
        return ""
    ends = sel.iloc[[0, -1]]
    return (f"L{readout_layer} head mean, top-100 targets per source (SN1's GRN): F1 "
            + " -> ".join(f"{f1.get(r.n_units, float('nan')):.3f} at ~{r.n_cells:.0f} cells" for r in ends.itertuples())
            + "; the seeds' GRNs agree (mean pairwise Jaccard) "
            + " -> ".join(f"{r.jaccard_mean:.2f}" for r in ends.itertuples())
            + " (1 where every seed holds every group of cells).")


def register(app, store, settings, jobs, exports):
    register_bottom_line(app, store, "cssi", ("cssi_gain",))
    @app.callback(Output(ids.graph("cssi-scaling"), "figure"), Output(ids.figdata("cssi-scaling"), "data"),
                  Output(ids.graph("cssi-composition"), "figure"), Output(ids.figdata("cssi-composition"), "data"),
                  Output(ids.CSSI_SCALING_NOTE, "children"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.CSSI_REFERENCE, "value"))
    def scaling(run_id, reference):
        if not run_id or not reference or not store.has_table(run_id, "scaling_curve"):
            return {}, None, {}, None, "This run has no scaling analysis (it needs CSSI's random groups)."
        m = store.manifest(run_id)
        curve = store.table(run_id, "scaling_curve").query("reference == @reference")
        boot = (store.table(run_id, "scaling_bootstrap").query("reference == @reference")
                if store.has_table(run_id, "scaling_bootstrap") else None)
        fig = scaling_curves(curve, boot, readout_layer=m.readout_layer, reference=reference)
        out = [*exports.drawn("cssi-scaling", fig, curve)]
        comp = store.table(run_id, "composition_curve").query("reference == @reference")
        out += [*exports.drawn("cssi-composition", composition_plot(comp, reference=reference), comp)]
        note = scaling_note(store.table(run_id, "statistics_registry"), reference)
        if store.has_table(run_id, "scaling_agreement"):
            note = html.Div([html.P(agreement_sentence(store.table(run_id, "scaling_agreement"), curve, reference,
                                                       m.readout_layer), className="explain"), note])
        return (*out, note)

    @app.callback(Output(ids.CSSI_REFERENCE, "options"), Output(ids.CSSI_REFERENCE, "value"),
                  Output(ids.CSSI_DIRECTION, "options"), Output(ids.CSSI_DIRECTION, "value"),
                  Output(ids.CSSI_SITE, "options"), Output(ids.CSSI_SITE, "value"),
                  Output(ids.CSSI_SLIDER, "max"), Output(ids.CSSI_SLIDER, "marks"), Output(ids.CSSI_SLIDER, "value"),
                  Output(ids.CSSI_NOTE, "children"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.SELECTED_HEAD, "data"), State(ids.CSSI_SITE, "value"),
                  State(ids.CSSI_LINK, "data"))
    def setup(run_id, selected, site, link):
        """Options of a run; the slider opens at a link's number of strata when the run has it, else at the
        pre-specified one. A head selected on another page becomes the edge source."""
        if not run_id or not store.has_table(run_id, "cssi_curve"):
            return [], None, [], None, [], None, MAX_STRATA, {}, 5, "This run has no CSSI results."
        run = store.cssi(run_id)
        heads = [f"L{selected['layer']}H{selected['head']}"] if selected else []
        labels = list(run.source.sites["label"])
        if ctx.triggered_id == ids.SELECTED_HEAD:   # a head picked elsewhere changes the edge source, nothing else
            return (no_update,) * 5 + (heads[0] if heads and heads[0] in labels else no_update,) + (no_update,) * 4
        m = store.manifest(run_id)
        curve = store.table(run_id, "cssi_curve")
        refs, dirs = list(dict.fromkeys(curve["reference"])), list(dict.fromkeys(curve["direction"]))
        readout = m.readout_layer
        default = f"L{readout} mean" if f"L{readout} mean" in labels else labels[0]
        site = site if site in labels else (heads[0] if heads and heads[0] in labels else default)
        grid = sorted(int(k) for k in run.strata.levels["n_strata"].unique())
        top = min(MAX_STRATA, run.strata.n_fine - 1)
        primary = m.config.cssi.primary_n_strata
        value = link if link is not None and 2 <= link <= top else primary if primary in grid else grid[0]
        marks = {k: {"label": str(k), "style": {"fontWeight": "bold", "color": "#D55E00"} if k == primary else {}}
                 for k in grid if k <= top}
        c = m.config.cssi
        rep = run.params["representation"]
        if run.params.get("cell_embedding"):
            rep = f"{m.family} cell embeddings ({run.params['cell_embedding']})"
        note = (f"Strata: Leiden on the kNN graph of the {rep} of {len(run.cells)} cells, "
                f"nested in {run.strata.n_fine} fine clusters (so any number of strata is a sum of clusters). "
                f"Attention layers accumulated per stratum: {', '.join(f'L{x}' for x in run.params['layers'])}. "
                f"Null band: {c.n_null} random strata of the same sizes; p-values also against {c.n_null} "
                f"label shuffles and {c.n_gene_null} gene-permuted references. The marked positions "
                f"({', '.join(str(k) for k in marks)}) are precomputed; any other position from 2 to {top} is "
                f"computed in the background when the slider stops there. Pre-specified level: {primary} strata "
                f"(the bold mark).")
        return ([{"label": r, "value": r} for r in refs], refs[0], [{"label": d, "value": d} for d in dirs], dirs[0],
                [{"label": x, "value": x} for x in labels], site, top, marks, value, note)

    # the slider's position goes into the URL in place (no history entry), so a link reopens it
    app.clientside_callback(ClientsideFunction("explorer", "strataInUrl"), Output(ids.CSSI_URL_STRATA, "children"),
                            Input(ids.CSSI_SLIDER, "value"), prevent_initial_call=True)

    @app.callback(Output(ids.graph("cssi-curve"), "figure"), Output(ids.figdata("cssi-curve"), "data"),
                  Output(ids.CSSI_STATUS, "children"), Output(ids.CSSI_POLL, "disabled"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.CSSI_REFERENCE, "value"), Input(ids.CSSI_DIRECTION, "value"),
                  Input(ids.CSSI_SITE, "value"), Input(ids.CSSI_AGGREGATION, "value"), Input(ids.CSSI_METRIC, "value"),
                  Input(ids.CSSI_SLIDER, "value"), Input(ids.CSSI_POLL, "n_intervals"), Input(ids.CSSI_CANCEL, "n_clicks"))
    def curve(run_id, reference, direction, site, aggregation, metric, n_strata, _tick, _cancel):
        """The curve and status; while the slider's level is being computed in the background, polls for it
        (the job writes only to the job cache, so nothing here waits for it)."""
        if not (run_id and reference and direction and site and n_strata) or not store.has_table(run_id, "cssi_curve"):
            return {}, [], "", True
        rows = curve_rows(store, jobs, run_id, reference, direction)
        sel = rows[(rows["label"] == site) & (rows["aggregation"] == aggregation) & (rows["metric"] == metric)]
        fig = cssi_curve(sel, metric=metric, aggregation=aggregation, site=site, reference=reference,
                         direction=direction, selected=n_strata)
        point = sel[sel["n_strata"] == n_strata]
        if point.empty and ctx.triggered_id == ids.CSSI_CANCEL:
            status, pending = f"Cancelled: {n_strata} strata was not scored; move the slider to start again.", False
        elif point.empty:
            status, pending = (f"{n_strata} strata lies between the precomputed levels: its CSSI score and nulls are "
                               "being computed in the background (the embedding and per-stratum edges are already "
                               "drawn)."), True
        else:
            status, pending = level_summary(point.iloc[0], n_strata, aggregation, metric), False
        return (*exports.drawn("cssi-curve", fig, sel.drop(columns=["source"])), status, not pending)

    @app.callback(Output(ids.graph("cssi-embedding"), "figure"), Output(ids.figdata("cssi-embedding"), "data"),
                  Output(ids.graph("cssi-edges"), "figure"), Output(ids.figdata("cssi-edges"), "data"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.CSSI_REFERENCE, "value"), Input(ids.CSSI_DIRECTION, "value"),
                  Input(ids.CSSI_SITE, "value"), Input(ids.CSSI_SLIDER, "value"))
    def strata_view(run_id, reference, direction, site, n_strata):
        """Cells coloured by stratum and each stratum's top edges: sums over fine clusters, drawn at once for
        any slider position."""
        if not (run_id and reference and direction and site and n_strata) or not store.has_table(run_id, "cssi_curve"):
            return {}, [], {}, []
        run = store.cssi(run_id)
        assignment = store.cssi_assignment(run_id, int(n_strata))
        cells = run.cells.assign(stratum=assignment[run.cells["fine_cluster"].to_numpy()])
        if len(cells) > settings.max_cells_drawn:
            cells = cells.sample(settings.max_cells_drawn, random_state=0)
        emb_fig = cssi_embedding(cells, n_strata=int(assignment.max()) + 1,
                                 representation=run.params["representation"])
        edges_all = store.reference_edges(run_id)
        ref = ReferenceNetwork(reference, edges_all[edges_all["reference"] == reference], {})
        sites = run.source.sites
        edges = stratum_top_edges(run, store.panel(run_id), ref, assignment, sites[sites["label"] == site].iloc[0],
                                  direction=direction, n_top=N_TOP_EDGES)
        edges_fig = cssi_stratum_edges(edges, site=site, direction=direction) if len(edges) else {}
        return *exports.drawn("cssi-embedding", emb_fig, cells), *exports.drawn("cssi-edges", edges_fig, edges)

    def admit_level(n_strata, reference, direction, run_id):
        """In the server, before a worker: nothing to compute (no run, a level on the grid or cached) is answered
        here; a level the run's fine clusters cannot hold is refused."""
        if not (run_id and reference and direction and n_strata) or not store.has_table(run_id, "cssi_curve"):
            return no_update
        curve = store.table(run_id, "cssi_curve")
        if bool((curve["n_strata"] == n_strata).any()) or jobs.get(live_key(run_id, reference, direction,
                                                                            n_strata)) is not None:
            return no_update
        if not isinstance(n_strata, int) or not 2 <= n_strata < store.cssi(run_id).strata.n_fine:
            return f"Refused: {n_strata} strata is not a level this run's fine clusters can hold."
        return None

    @app.callback(Output(ids.CSSI_JOB_STATUS, "children"),
                  Input(ids.CSSI_SLIDER, "value"), Input(ids.CSSI_REFERENCE, "value"),
                  Input(ids.CSSI_DIRECTION, "value"), State(ids.RUN_SELECT, "value"),
                  **background_job(None, ids.CSSI_CANCEL, ids.CSSI_PROGRESS))
    @admitted_by(admit_level, busy=lambda message: message)
    def compute_level(set_progress, n_strata, reference, direction, run_id):
        """Score a level off the precomputed grid with the run's null settings; cached in the job cache."""
        key = live_key(run_id, reference, direction, n_strata)
        run = store.cssi(run_id)
        run = dataclasses.replace(run, strata=add_level(run.strata, int(n_strata)))
        c = store.manifest(run_id).config.cssi
        edges_all = store.reference_edges(run_id)
        ref = ReferenceNetwork(reference, edges_all[edges_all["reference"] == reference], {})
        set_progress((2, f"{n_strata} strata: scoring"))
        rows, _null = score_level(run, store.panel(run_id), ref, int(n_strata), direction=direction,
                                  n_null=c.n_null, n_gene_null=c.n_gene_null, seed=c.seed,
                                  progress=lambda i, n: set_progress((int(100 * i / n), f"null draw {i}/{n}")))
        jobs.set(key, rows.to_dict("records"))
        set_progress((100, "done"))
        return f"Computed {n_strata} strata ({c.n_null} random strata, {c.n_gene_null} gene permutations)."

    @app.callback(Output(ids.graph("cssi-synthetic"), "figure"), Output(ids.figdata("cssi-synthetic"), "data"),
                  Output(ids.CSSI_SYNTHETIC_TABLE, "data"), Output(ids.CSSI_SYNTHETIC_TABLE, "columns"),
                  Input(ids.RUN_SELECT, "value"))
    def synthetic(run_id):
        if not run_id or not store.has_table(run_id, "cssi_synthetic"):
            return {}, [], [], []
        summary = synthetic_summary(store.table(run_id, "cssi_synthetic"))
        return (*exports.drawn("cssi-synthetic", cssi_synthetic(summary), summary), table_records(summary),
                [table_column(c, float_columns(summary)) for c in summary.columns])
