"""Perturbation: per-perturbation AUROC by layer and head vs correlation and gene-level baselines; paired
attention-vs-correlation scatter (the selected head, else the pre-specified read-out layer); sensitivity grid."""
from __future__ import annotations

import dash_bootstrap_components as dbc
import numpy as np
import pandas as pd
from dash import Input, Output, State, dash_table, dcc, html, no_update

from analysis.config import DE_TESTS
from analysis.scoring.edges import CORRELATION_EDGE_TYPES
from analysis.scoring.panel import describe_left_out
from analysis.scoring.rank_reversal import describe, perturbation_flips

from .. import ids
from ..components import background_job, figure_card, float_columns, table_column, table_records
from ..jobs import admitted_by
from ..figures import paired_scatter, perturbation_box, sensitivity_heatmap, source_label
from ..verdict_view import bottom_line_slot, register_bottom_line

PATH, NAME = "/perturbation", "Perturbation"


def layout(**_):
    return dbc.Container([
        html.H3("Perturbation-first evaluation"),
        bottom_line_slot("perturbation"),
        html.Div(id=ids.PERT_NOTE, className="explain mb-2"),
        figure_card("pert-box"),
        dbc.Row([
            dbc.Col(figure_card("pert-scatter"), lg=6),
            dbc.Col([dbc.Label("Grid source"), dcc.Dropdown(id=ids.PERT_GRID_SOURCE, clearable=False),
                     figure_card("pert-grid")], lg=6),
        ]),
        html.H5("On-target check", className="mt-3"),
        html.P("Each perturbation's own gene must move the modality's way (CRISPRi: down, CRISPRa: up; Scanpy's log2 "
               "fold change vs control cells). Perturbations that fail are listed here and left out of the "
               "confirmatory tests.", className="explain"),
        dash_table.DataTable(id=ids.PERT_ON_TARGET, page_size=10, sort_action="native",
                             style_data_conditional=[{"if": {"filter_query": "{status} = failed"},
                                                      "backgroundColor": "#f8d7da"}]),
        html.H5("Recompute with other DE settings", className="mt-3"),
        dbc.Row([
            dbc.Col([dbc.Label("|log2FC| threshold"), dbc.Input(id=ids.PERT_LFC, type="number", value=0.5, min=0,
                                                                 step=0.05)], md=2),
            dbc.Col([dbc.Label("control cells (empty = all)"), dbc.Input(id=ids.PERT_CONTROLS, type="number",
                                                                         min=3, step=1)], md=2),
            dbc.Col([dbc.Label("test"), dbc.RadioItems(id=ids.PERT_TEST, value="welch", inline=True, options=[
                {"label": "Welch t", "value": "welch"}, {"label": "Mann-Whitney", "value": "mannwhitney"}])], md=3),
            dbc.Col([dbc.Button("Run", id=ids.PERT_RUN, color="primary", className="me-2 mt-4"),
                     dbc.Button("Cancel", id=ids.PERT_CANCEL, color="secondary", className="mt-4", disabled=True)],
                    md=2),
            dbc.Col(dbc.Progress(id=ids.PERT_PROGRESS, value=0, className="mt-4", style={"height": "22px"}), md=3),
        ]),
        html.Div(id=ids.PERT_STATUS, className="explain my-2"),
        figure_card("pert-custom", "The selected head (else the read-out layer mean), Spearman correlation on "
                    "control cells and the variance baseline, scored against DE targets called with these settings. "
                    "Results are cached: repeating a request is instant.",
                    placeholder="Set a threshold, control cells and a test above, then Run: the result is drawn here."),
    ], fluid=True)


def _label_frame(per: pd.DataFrame, readout: int | None, selected: dict | None) -> pd.DataFrame:
    """Per-perturbation AUROC rows labelled for drawing; ``readout``: the layer-mean source to highlight."""
    means = per[per["edge_type"] == "attention_layer_mean"].assign(kind="attention")
    if readout is not None:
        means.loc[means["layer"] == readout, "kind"] = "readout"
    parts = [means]
    if selected:
        parts.append(per[(per["edge_type"] == "attention") & (per["layer"] == selected["layer"])
                         & (per["head"] == selected["head"])].assign(kind="head"))
    parts.append(per[per["edge_type"].str.startswith("spearman")].assign(kind="correlation"))
    parts.append(per[per["edge_type"].str.startswith("baseline_")].assign(kind="baseline"))
    frame = pd.concat(parts, ignore_index=True)
    frame["source"] = [source_label(e, l, h) for e, l, h in zip(frame["edge_type"], frame["layer"], frame["head"])]
    return frame[["source", "kind", "perturbation", "auroc", "n_pos", "n_neg", "edge_type", "layer", "head"]]


def left_out_note(store, run_id: str) -> str:
    """What the run could not evaluate because the perturbed gene is not a panel gene, grouped by reason (table
    ``perturbations_left_out``); empty when every perturbed gene is in the panel."""
    if not store.has_table(run_id, "perturbations_left_out"):
        return ""
    left = store.table(run_id, "perturbations_left_out")
    if left.empty:
        return ""
    return (f" Left out before scoring, {len(left)} perturbed gene(s) not in the attention panel: "
            f"{describe_left_out(left, names=10)}.")


def primary_correlation(manifest) -> str:
    """Edge type of the run's primary correlation edge (``perturbation.correlation_edge``; signed rho by default)."""
    return CORRELATION_EDGE_TYPES[manifest.config.perturbation.correlation_edge]


def register(app, store, settings, jobs, exports):
    register_bottom_line(app, store, "perturbation", ("perturbation", "baselines"))

    @app.callback(Output(ids.PERT_ON_TARGET, "data"), Output(ids.PERT_ON_TARGET, "columns"),
                  Input(ids.RUN_SELECT, "value"))
    def on_target(run_id):
        if not run_id or not store.has_table(run_id, "on_target"):
            return [], []
        table = store.table(run_id, "on_target")
        return table_records(table), [{**table_column(c, float_columns(table)), "name": c.replace("_", " ")}
                                      for c in table.columns]

    @app.callback(Output(ids.graph("pert-box"), "figure"), Output(ids.figdata("pert-box"), "data"),
                  Output(ids.graph("pert-scatter"), "figure"), Output(ids.figdata("pert-scatter"), "data"),
                  Output(ids.PERT_NOTE, "children"), Output(ids.PERT_GRID_SOURCE, "options"),
                  Output(ids.PERT_GRID_SOURCE, "value"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.SELECTED_HEAD, "data"))
    def show(run_id, selected):
        if not run_id or not store.has_table(run_id, "perturbation_auroc"):
            return {}, [], {}, [], "This run has no perturbation column, so no perturbation-first evaluation.", [], None
        m = store.manifest(run_id)
        readout = m.readout_layer
        per = store.table(run_id, "perturbation_auroc")
        frame = _label_frame(per, readout, selected)
        box = perturbation_box(frame, readout_layer=readout)
        x_src = frame[frame["edge_type"] == primary_correlation(m)].set_index("perturbation")["auroc"]
        y_kind = "head" if selected and (frame["kind"] == "head").any() else "readout"
        y_src = frame[frame["kind"] == y_kind].set_index("perturbation")["auroc"]
        y_label = (f"L{selected['layer']}H{selected['head']}" if y_kind == "head" else f"L{readout} mean")
        pairs = pd.DataFrame({"x": x_src, "y": y_src}).dropna().reset_index()
        scatter = paired_scatter(pairs, x_label=source_label(primary_correlation(m), -1, -1), y_label=y_label)
        groups = store.table(run_id, "de_groups")
        note = (f"{per['perturbation'].nunique()} evaluable perturbations of {len(groups)} tested "
                f"(evaluable: perturbed gene in the panel and at least one DE and one non-DE target). "
                f"DE: {m.config.perturbation.test} test, |log2FC| >= "
                f"{m.config.perturbation.lfc_threshold}, BH q < {m.config.perturbation.alpha}. Correlation edges "
                f"(mean AUROC): " + ", ".join(
                    f"{source_label(e, -1, -1)} {per.loc[per['edge_type'] == e, 'auroc'].mean():.3f}"
                    + (" (primary)" if e == primary_correlation(m) else "")
                    for e in CORRELATION_EDGE_TYPES.values() if (per["edge_type"] == e).any())
                + "; signed rho is the paper's (SN2, SN6.2), |rho| and sign-matched (the edge's sign times the "
                "modality's direction against the observed direction of change) are the checks it lacked. Attention "
                "is read A[perturbed gene (query), target (key)], the Heads page's TF -> target direction; an "
                "attention weight has no sign, so it has no signed or sign-matched variant. ")
        orders = " ".join(f"By mean per-perturbation AUROC, {row['ordering'].replace(' vs second', '')}: "
                          f"{describe(row)}" for row in perturbation_flips(per).to_dict("records"))
        note += orders + direct_target_note(store, run_id) + left_out_note(store, run_id)
        if not store.has_table(run_id, "sensitivity_grid"):
            return (*exports.drawn("pert-box", box, frame), *exports.drawn("pert-scatter", scatter, pairs), note,
                    [], None)
        grid = store.table(run_id, "sensitivity_grid")
        sources = sorted({source_label(e, l, -1) for e, l in zip(grid["edge_type"], grid["layer"])})
        primary = source_label(primary_correlation(m), -1, -1)
        return (*exports.drawn("pert-box", box, frame), *exports.drawn("pert-scatter", scatter, pairs), note, sources,
                primary if primary in sources else sources[0])

    @app.callback(Output(ids.graph("pert-grid"), "figure"), Output(ids.figdata("pert-grid"), "data"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.PERT_GRID_SOURCE, "value"))
    def grid(run_id, source):
        if not run_id or not source or not store.has_table(run_id, "sensitivity_grid"):
            return {}, []
        g = store.table(run_id, "sensitivity_grid")
        g = g[(g["perturbations"] == "all")
              & [source_label(e, l, -1) == source for e, l in zip(g["edge_type"], g["layer"])]]
        return exports.drawn("pert-grid", sensitivity_heatmap(g, source=source), g)

    def custom_request(run_id, lfc, n_control, test, selected):
        """(cache key, layer, head) of a valid request, or (None, the status that refuses it, None)."""
        if not run_id or not store.has_table(run_id, "perturbation_auroc"):
            return None, "This run has no perturbation data.", None
        if not isinstance(lfc, (int, float)) or lfc < 0 or (
                n_control is not None and not (isinstance(n_control, (int, float))
                                               and 3 <= n_control <= settings.max_custom_control_cells)):
            return None, (f"Refused: the threshold must be >= 0 and control cells between 3 and "
                          f"{settings.max_custom_control_cells}."), None
        if test not in DE_TESTS:
            return None, f"Refused: the test must be one of {', '.join(DE_TESTS)}.", None
        m = store.manifest(run_id)
        layer, head = (selected["layer"], selected["head"]) if selected else (m.readout_layer, -1)
        return ("custom-de", run_id, float(lfc), n_control, test, layer, head), layer, head

    def admit_custom(_n, run_id, lfc, n_control, test, selected):
        """In the server, before a worker: refusals and cached results are answered here."""
        key, layer, _head = custom_request(run_id, lfc, n_control, test, selected)
        if key is None:
            return no_update, no_update, layer
        result = jobs.get(key)
        return None if result is None else (*exports.drawn("pert-custom", result[0], result[1]), result[2])

    @app.callback(Output(ids.graph("pert-custom"), "figure"), Output(ids.figdata("pert-custom"), "data"),
                  Output(ids.PERT_STATUS, "children"),
                  Input(ids.PERT_RUN, "n_clicks"),
                  State(ids.RUN_SELECT, "value"), State(ids.PERT_LFC, "value"), State(ids.PERT_CONTROLS, "value"),
                  State(ids.PERT_TEST, "value"), State(ids.SELECTED_HEAD, "data"),
                  **background_job(ids.PERT_RUN, ids.PERT_CANCEL, ids.PERT_PROGRESS))
    @admitted_by(admit_custom, busy=lambda message: (no_update, no_update, message))
    def custom(set_progress, _n, run_id, lfc, n_control, test, selected):
        key, layer, head = custom_request(run_id, lfc, n_control, test, selected)
        set_progress((5, "loading cells"))
        result = custom_de(store, run_id, store.manifest(run_id), lfc=float(lfc), n_control=n_control, test=test,
                           layer=layer, head=head, progress=set_progress)
        jobs.set(key, result)
        set_progress((100, "done"))
        fig, records, status = result
        return (*exports.drawn("pert-custom", fig, records), status)


def custom_de(store, run_id: str, manifest, *, lfc: float, n_control: int | None, test: str, layer: int,
              head: int, progress) -> tuple:
    """DE with the given settings, then per-perturbation AUROC of one attention source, control-cell Spearman and
    the variance baseline (the slow path behind the Run button)."""
    from analysis.rerun import RunContext
    from analysis.scoring.edges import EdgeScores, combine, mean_scores, spearman_edges
    from analysis.scoring.perturbation import differential_expression, gene_level_scores, perturbation_auroc

    panel = store.panel(run_id)
    cells = RunContext.from_manifest(manifest, panel).cells
    progress((30, "differential expression"))
    cfg = manifest.config.perturbation
    de = differential_expression(cells, panel, lfc_threshold=lfc, n_control=n_control, alpha=cfg.alpha, test=test,
                                 seed=cfg.seed)
    progress((60, "edge scores"))
    if head >= 0:
        att = store.head_edges(run_id).head(layer, head)
    else:
        attention = store.attention(run_id)
        att = EdgeScores(mean_scores(attention.layer_sums[layer], attention.counts)[None],
                         pd.DataFrame({"edge_type": ["attention_layer_mean"], "layer": [layer], "head": [-1]}),
                         np.asarray(attention.counts) > 0, panel, {})
    base = gene_level_scores(cells, panel)
    variance = EdgeScores(base.scores[1:2], base.sources.iloc[1:2].reset_index(drop=True), base.observed, panel, {})
    progress((80, "AUROC"))
    per = perturbation_auroc(combine(att, spearman_edges(cells.controls(), panel), variance), de)
    frame = _label_frame(per, layer if head < 0 else None, {"layer": layer, "head": head} if head >= 0 else None)
    fig = perturbation_box(frame, readout_layer=manifest.readout_layer)
    fig.update_layout(title={"text": f"Custom DE: |log2FC| >= {lfc:g}, {de.params['n_control']} control cells, "
                                     f"{test}<br><sup>{per['perturbation'].nunique()} evaluable perturbations</sup>"})
    status = (f"{per['perturbation'].nunique()} evaluable perturbations; mean AUROC "
              + ", ".join(f"{k} {v:.3f}" for k, v in frame.groupby("source", sort=False)["auroc"].mean().items()))
    return fig, frame.to_dict("records"), status


def direct_target_note(store, run_id: str) -> str:
    """The direct-target check (SN16.2 registry 35) in one sentence per reference, or nothing without one."""
    if not store.has_table(run_id, "direct_target"):
        return ""
    table = store.table(run_id, "direct_target")
    parts = []
    for ref, grp in table.groupby("reference", sort=False):
        means = ", ".join(f"{source_label(e, l, -1)} {g['auroc'].mean():.3f}"
                          for (e, l), g in grp.groupby(["edge_type", "layer"]))
        parts.append(f"{ref}: over {grp['perturbation'].nunique()} perturbed TFs, mean AUROC {means}")
    return (" Direct targets (the paper's TRRUST direct-target check, read here as each perturbed TF's reference "
            "targets against the other genes DE tested): " + "; ".join(parts) + ".")

