"""Compare: two or more runs (any models, any datasets) side by side. Reference recovery of every layer re-scored on
the genes all chosen runs share, on a relative-depth axis, with each run's correlation baseline; perturbation-first
AUROC per layer with correlation and the variance baseline; each run's confound numbers in one table
(:mod:`analysis.scoring.compare`)."""
from __future__ import annotations

import dash_bootstrap_components as dbc
import numpy as np
import pandas as pd
from dash import ALL, Input, Output, State, dash_table, dcc, html

from analysis.io.references import ReferenceNetwork
from analysis.scoring.compare import (confound_summary, edge_consistency, feature_summary, layer_recovery,
                                     shared_symbols)
from analysis.scoring.rank_reversal import describe, run_order_flip
from analysis.scoring.replication import replicate, universe_protocols

from .. import ids
from ..components import figure_card, table_column, table_records, underflow_note
from ..figures import compare_layer_profiles, convergence_plot, feature_depth_profile, replication_profile

PATH, NAME = "/compare", "Compare"
SUMMARY_TABLES = ("incremental_value", "incremental_value_matched", "residualisation", "degree_null", "cssi_curve",
                  "ablation_results")
MAX_RUNS = 6
TABLE_COLUMNS = ("run", "model", "cells", "incremental_delta", "incremental_ci", "matched_delta", "matched_ci",
                 "retained_attention", "retained_correlation", "degree_excess", "degree_p", "cssi_gain",
                 "ablation_top_k", "ablation_delta", "ablation_p")
NUMERIC = tuple(c for c in TABLE_COLUMNS if c not in ("run", "model", "cells", "incremental_ci", "matched_ci"))
REPLICATION_COLUMNS = ("hypothesis", "effect", "n", "p", "q", "confirmatory")
FEATURE_COLUMNS = ("run", "layer", "relative_depth", "n_features", "fve", "behaviour_delta", "n_dead", "n_dense",
                   "n_svd_visible", "n_modules", "causal_specificity", "best_state_r", "best_state_null_r",
                   "best_tf_r", "best_tf_null_r", "regulatory_passing", "regulatory_tfs", "regulatory_null")
FEATURE_NUMERIC = ("relative_depth", "fve", "behaviour_delta", "causal_specificity", "best_state_r",
                   "best_state_null_r", "best_tf_r", "best_tf_null_r")
REPLICATION_NUMERIC = ("effect", "p", "q")
UNIVERSE_COLUMNS = ("run", "protocol", "n_genes", "layer", "n", "attention_mean", "correlation_mean", "advantage",
                    "ci_low", "ci_high", "p", "p_protocol")
CONSISTENCY_COLUMNS = ("run_a", "run_b", "edge_type", "layer_a", "layer_b", "rho", "p", "n")


def figure_with_table(title: str, explanation: str, figure: str, table_id: str, columns: tuple[str, ...],
                      numeric: tuple[str, ...]) -> list:
    """A section: its title, what it shows, a figure card and a sortable table of its rows."""
    return [html.H5(title, className="mt-4"), html.P(explanation, className="explain"), figure_card(figure),
            dash_table.DataTable(id=table_id, sort_action="native", page_size=12, style_table={"overflowX": "auto"},
                                 columns=[table_column(c, numeric) for c in columns])]


def layout(**_):
    return dbc.Container([
        html.H3("Compare runs"),
        html.P("Pick two or more runs. Reference recovery is re-scored on the genes every chosen run's panel holds, "
               "so the AUROCs count the same candidate pairs; layers are placed at relative depth so models of "
               "different depth line up. Dashed lines: each run's correlation baseline.", className="explain"),
        dbc.Row([dbc.Col([dbc.Label("Runs"), dcc.Dropdown(id=ids.COMPARE_RUNS, multi=True)], md=8),
                 dbc.Col([dbc.Label("Reference"), dcc.Dropdown(id=ids.COMPARE_REFERENCE, clearable=False)], md=4)]),
        html.Div(id=ids.COMPARE_NOTE, className="explain my-2"),
        html.Div([dbc.Label("Head per run (starred on the recovery profile)"), dbc.Row(id=ids.COMPARE_HEADS)],
                 className="mb-2"),
        dbc.Row([dbc.Col(figure_card("compare-layers"), lg=6), dbc.Col(figure_card("compare-perturbation"), lg=6)]),
        html.H5("Confound battery, one row per run", className="mt-3"),
        html.P("incremental / matched: gene + attention minus gene-only AUROC (GroupKFold by perturbation, logistic; "
               "95% perturbation-bootstrap CI); retained: share of above-chance reference AUROC left after OLS "
               "residualisation on expression covariates; degree excess: AUROC above the curveball degree-preserving "
               "null; CSSI gain: CSSI-max minus pooled AUROC of the read-out layer at the pre-specified number of "
               "strata; ablation: change of the masked-behaviour loss when the largest top-k set is zeroed.",
               className="explain"),
        dash_table.DataTable(id=ids.COMPARE_TABLE, sort_action="native", style_table={"overflowX": "auto"},
                             columns=[table_column(c, NUMERIC) for c in TABLE_COLUMNS]),
        *figure_with_table("Cross-context replication (paper 2.6-2.7)",
                           "Per run and layer: the mean per-perturbation advantage of attention over correlation with "
                           "a 10,000-draw perturbation-bootstrap 95% CI, and the paired Wilcoxon test; between runs, "
                           "whether the read-out layers' advantages differ (Mann-Whitney). BH q is over this "
                           "comparison's tests; the read-out layer of each run is confirmatory.",
                           "compare-replication", ids.COMPARE_REPLICATION, REPLICATION_COLUMNS, REPLICATION_NUMERIC),
        dbc.Button("HVG-protocol confound check (SN14.9)", id=ids.COMPARE_UNIVERSE_BUTTON, color="primary",
                   outline=True, className="mt-3", n_clicks=0),
        html.Div(id=ids.COMPARE_UNIVERSE, className="mt-2"),
        html.H5("Cross-model convergence (SN13)", className="mt-4"),
        html.P("Unstratified recovery at several cell counts (subsamples of each run's attention cells, 95% "
               "group-bootstrap CI) on each run's own panel; how far each layer's attention follows expression "
               "correlation; and how consistent two runs' edge scores are on the genes they share (layers matched at "
               "relative depth).", className="explain"),
        dbc.Row([dbc.Col(figure_card("compare-convergence"), lg=7),
                 dbc.Col(figure_card("compare-agreement"), lg=5)]),
        dash_table.DataTable(id=ids.COMPARE_CONSISTENCY, sort_action="native", page_size=12,
                             columns=[table_column(c, ("rho", "p")) for c in CONSISTENCY_COLUMNS]),
        html.Small(id=ids.COMPARE_CONSISTENCY_NOTE, className="explain"),
        *figure_with_table("Residual-stream features (SAEs), one row per run and layer",
                           "Per layer's TopK SAE: fraction of variance explained (fve), the behaviour read-out's "
                           "change with the reconstruction spliced in, dead, dense and SVD-visible features, "
                           "co-activation modules, causal specificity (median over a sample of features ablated "
                           "alone of their own genes' prediction change over the rest's; none at the last layer), "
                           "the best "
                           "feature's Pearson r with a cell state and with a TF's regulon activity (null: an SAE of "
                           "shuffled activations, read-out layer), and the CRISPRi regulatory test: "
                           "TFs passing of those tested, and passing with another TF's targets (null).",
                           "compare-features", ids.COMPARE_FEATURES, FEATURE_COLUMNS, FEATURE_NUMERIC),
    ], fluid=True)


def run_features(store, run_id: str) -> pd.DataFrame | None:
    """One run's SAE summary rows (:func:`analysis.scoring.compare.feature_summary`), or None without SAEs."""
    if not store.has_table(run_id, "sae_layers"):
        return None
    m = store.manifest(run_id)
    optional = {name: store.table(run_id, name) if store.has_table(run_id, name) else None
                for name in ("sae_programmes", "sae_regulatory")}
    return feature_summary(store.table(run_id, "sae_layers"), optional["sae_programmes"], optional["sae_regulatory"],
                           n_layers=m.model.n_layers).assign(run=m.short_name)


def head_recovery(store, run_id: str, head: str, reference: str, symbols: list[str]) -> pd.DataFrame:
    """One head's AUROC on the shared genes (``head``: ``L<layer>H<head>``), at its run's relative depth."""
    layer, h = (int(x) for x in head[1:].split("H"))
    m = store.manifest(run_id)
    edges = store.head_edges(run_id).head(layer, h).restrict(symbols)
    ref_edges = store.reference_edges(run_id)
    rec = layer_recovery(edges, ReferenceNetwork(reference, ref_edges[ref_edges["reference"] == reference], {}),
                         symbols)
    rec["relative_depth"] = layer / max(m.model.n_layers - 1, 1)
    return rec.assign(run=m.short_name, head_label=head)


def register(app, store, settings, jobs, exports):
    @app.callback(Output(ids.COMPARE_HEADS, "children"), Input(ids.COMPARE_RUNS, "value"))
    def head_pickers(run_ids):
        """One head dropdown per chosen run (heads differ in number between models), opening empty."""
        cols = []
        for run_id in (run_ids or [])[:MAX_RUNS]:
            m = store.manifest(run_id)
            options = [f"L{layer}H{h}" for layer in range(m.model.n_layers) for h in range(m.model.n_heads)]
            cols.append(dbc.Col([html.Small(m.short_name),
                                 dcc.Dropdown(id=ids.compare_head(run_id), options=options, placeholder="head")],
                                md=2))
        return cols

    @app.callback(Output(ids.COMPARE_RUNS, "options"), Output(ids.COMPARE_RUNS, "value"),
                  Input(ids.RUN_SELECT, "options"))
    def runs(_options):
        """Every run that opens; the newest run of each model family pre-selected (the embedded default's two)."""
        manifests, _skipped = store.runs()
        chosen = list({m.family: m.run_id for m in reversed(manifests)}.values())
        return [{"label": m.title, "value": m.run_id} for m in manifests], chosen

    @app.callback(Output(ids.COMPARE_REFERENCE, "options"), Output(ids.COMPARE_REFERENCE, "value"),
                  Input(ids.COMPARE_RUNS, "value"))
    def references(run_ids):
        if not run_ids:
            return [], None
        names = [set(store.reference_edges(r)["reference"]) for r in run_ids]
        common = sorted(set.intersection(*names))
        return common, (common[0] if common else None)

    @app.callback(Output(ids.graph("compare-layers"), "figure"), Output(ids.figdata("compare-layers"), "data"),
                  Output(ids.graph("compare-perturbation"), "figure"),
                  Output(ids.figdata("compare-perturbation"), "data"),
                  Output(ids.COMPARE_TABLE, "data"), Output(ids.COMPARE_NOTE, "children"),
                  Input(ids.COMPARE_RUNS, "value"), Input(ids.COMPARE_REFERENCE, "value"),
                  Input(ids.compare_head(ALL), "value"), State(ids.compare_head(ALL), "id"))
    def compare(run_ids, reference, head_values, head_ids):
        if not run_ids or len(run_ids) < 2:
            return {}, [], {}, [], [], "Pick at least two runs."
        if len(run_ids) > MAX_RUNS:
            return {}, [], {}, [], [], f"Pick at most {MAX_RUNS} runs."
        if not reference:
            return {}, [], {}, [], [], "The chosen runs share no reference network."
        symbols = shared_symbols([store.panel(r) for r in run_ids])
        recovery, perturbation, rows, readout_aurocs = [], [], [], {}
        for run_id in run_ids:
            m = store.manifest(run_id)
            label = m.short_name
            edges = store.reference_edges(run_id)
            ref = ReferenceNetwork(reference, edges[edges["reference"] == reference], {})
            rec = layer_recovery(store.layer_edges(run_id, tuple(symbols)), ref, symbols)
            kind = rec["edge_type"].map({"attention_layer_mean": "attention", "spearman": "correlation"})
            recovery.append(rec.assign(run=label, kind=kind))
            if store.has_table(run_id, "perturbation_auroc"):
                per = store.table(run_id, "perturbation_auroc")
                means = per[per["layer"] >= 0].query("edge_type == 'attention_layer_mean'").groupby("layer")["auroc"]
                n_layers = m.model.n_layers
                frame = means.mean().reset_index().assign(kind="attention")
                for name, etype in (("correlation", "spearman"), ("variance", "baseline_variance")):
                    frame.loc[len(frame)] = {"layer": -1, "auroc": per.loc[per["edge_type"] == etype, "auroc"].mean(),
                                             "kind": name}
                frame["relative_depth"] = frame["layer"] / max(n_layers - 1, 1)
                perturbation.append(frame.assign(run=label, n_perturbations=per["perturbation"].nunique()))
                readout_aurocs[label] = per[(per["edge_type"] == "attention_layer_mean")
                                            & (per["layer"] == m.readout_layer)].set_index("perturbation")["auroc"]
            tables = {t: store.table(run_id, t) for t in SUMMARY_TABLES if store.has_table(run_id, t)}
            summary = confound_summary(tables, readout_layer=m.readout_layer,
                                       primary_n_strata=m.config.cssi.primary_n_strata)
            rows.append({"run": label, "model": m.model.name, "cells": m.data.cells_line, **summary})
        recovery = pd.concat(recovery, ignore_index=True)
        layers_fig = compare_layer_profiles(recovery, value="auroc", y_title=f"AUROC vs {reference} (TF -> target)",
                                            title=f"Reference recovery by depth on {len(symbols)} shared genes")
        chosen = {i["run"]: v for i, v in zip(head_ids or [], head_values or []) if v and i["run"] in run_ids}
        heads = [head_recovery(store, run_id, head, reference, symbols) for run_id, head in chosen.items()]
        if heads:
            heads = pd.concat(heads, ignore_index=True)
            layers_fig.add_scatter(x=heads["relative_depth"], y=heads["auroc"], mode="markers+text",
                                   name="chosen heads",
                                   text=heads["run"] + " " + heads["head_label"], textposition="top center",
                                   marker={"symbol": "star", "size": 14, "color": "black"})
            recovery = pd.concat([recovery, heads.assign(kind="chosen head")], ignore_index=True)
        out = [*exports.drawn("compare-layers", layers_fig, recovery)]
        if perturbation:
            pert = pd.concat(perturbation, ignore_index=True)
            fig = compare_layer_profiles(pert, value="auroc", y_title="mean per-perturbation AUROC",
                                         title="Perturbation-first AUROC by depth (each run's own perturbations)")
            out += [*exports.drawn("compare-perturbation", fig, pert)]
        else:
            out += [{}, []]
        table = table_records(pd.DataFrame(rows))
        n_pos = recovery.groupby("run")["n_pos"].first().to_dict()
        note = (f"{len(symbols)} genes are in every chosen run's panel; {reference} positive pairs among them: "
                + ", ".join(f"{r} {int(n)}" for r, n in n_pos.items()) + ".")
        if (order := run_order_flip(readout_aurocs)) is not None:
            note += (" By mean per-perturbation AUROC at each run's read-out layer, " + describe(order))
        return (*out, table, note)

    @app.callback(Output(ids.graph("compare-replication"), "figure"),
                  Output(ids.figdata("compare-replication"), "data"), Output(ids.COMPARE_REPLICATION, "data"),
                  Input(ids.COMPARE_RUNS, "value"))
    def replication(run_ids):
        runs = {store.manifest(r).short_name: ctx for r in run_ids or []
                if (ctx := store.replication_context(r)) is not None}
        if not runs:
            return {}, [], []
        table, tests = replicate(runs)
        if table.empty:
            return {}, [], []
        return (*exports.drawn("compare-replication", replication_profile(table), table),
                table_records(tests[list(REPLICATION_COLUMNS)]))

    @app.callback(Output(ids.COMPARE_UNIVERSE, "children"), Input(ids.COMPARE_UNIVERSE_BUTTON, "n_clicks"),
                  State(ids.COMPARE_RUNS, "value"), prevent_initial_call=True)
    def universe(_clicks, run_ids):
        """SN14.9: each chosen screen under its own universe and under the top HVGs with no perturbed gene forced in
        (both scored at precompute from the same attention; only the evaluation universe differs)."""
        frames = []
        for run_id in run_ids or []:
            if store.has_table(run_id, "universe_check"):
                m = store.manifest(run_id)
                frames.append(universe_protocols(store.table(run_id, "universe_check")).assign(
                    run=m.short_name))
        if not frames:
            return dbc.Alert("No chosen run has the check: it needs a perturbation screen whose universe forces "
                             "perturbed genes in (panel or hvg_plus_perturbed).", color="secondary")
        table = pd.concat(frames, ignore_index=True).reindex(columns=UNIVERSE_COLUMNS)
        return [html.P("run: the run's own universe; hvg_only: its top genes by variance, no perturbed gene forced "
                       "in. p: attention vs correlation under that protocol; p_protocol: does the advantage move "
                       "between the two (paired, perturbations evaluable under both).", className="explain"),
                dash_table.DataTable(data=table_records(table), sort_action="native", page_size=16,
                                     columns=[table_column(c, tuple(UNIVERSE_COLUMNS[4:])) for c in UNIVERSE_COLUMNS],
                                     id=ids.COMPARE_UNIVERSE + "-table")]

    @app.callback(Output(ids.graph("compare-convergence"), "figure"),
                  Output(ids.figdata("compare-convergence"), "data"),
                  Output(ids.graph("compare-agreement"), "figure"), Output(ids.figdata("compare-agreement"), "data"),
                  Output(ids.COMPARE_CONSISTENCY, "data"), Output(ids.COMPARE_CONSISTENCY_NOTE, "children"),
                  Input(ids.COMPARE_RUNS, "value"), Input(ids.COMPARE_REFERENCE, "value"))
    def convergence(run_ids, reference):
        if not run_ids or len(run_ids) < 2 or not reference:
            return {}, [], {}, [], [], ""
        boots, agreement, edges = [], [], {}
        symbols = tuple(shared_symbols([store.panel(r) for r in run_ids]))
        for run_id in run_ids[:MAX_RUNS]:
            m = store.manifest(run_id)
            label = m.short_name
            if store.has_table(run_id, "scaling_bootstrap"):
                b = store.table(run_id, "scaling_bootstrap").query("reference == @reference")
                b = b[((b["edge_type"] == "attention_layer_mean") & (b["layer"] == m.readout_layer))
                      | (b["edge_type"] == "spearman")]
                boots.append(b.assign(run=label, kind=np.where(b["edge_type"] == "spearman", "correlation",
                                                               "attention")))
            if store.has_table(run_id, "attention_expression"):
                a = store.table(run_id, "attention_expression").query("correlation == 'signed'")
                agreement.append(a.assign(run=label, kind="attention",
                                          relative_depth=a["layer"] / max(m.model.n_layers - 1, 1)))
            edges[label] = store.layer_edges(run_id, symbols)
        out = []
        if boots:
            frame = pd.concat(boots, ignore_index=True)
            out += [*exports.drawn("compare-convergence", convergence_plot(frame), frame)]
        else:
            out += [{}, []]
        if agreement:
            frame = pd.concat(agreement, ignore_index=True)
            fig = compare_layer_profiles(frame, value="rho", y_title="Spearman(attention, expression rho)",
                                         title="Attention-expression agreement by depth (registry 17)",
                                         reference_line=(0.0, "no agreement"))
            out += [*exports.drawn("compare-agreement", fig, frame)]
        else:
            out += [{}, []]
        consistency = edge_consistency(edges)
        return (*out, table_records(consistency), underflow_note(consistency))

    @app.callback(Output(ids.graph("compare-features"), "figure"), Output(ids.figdata("compare-features"), "data"),
                  Output(ids.COMPARE_FEATURES, "data"), Input(ids.COMPARE_RUNS, "value"))
    def features(run_ids):
        frames = [f for r in (run_ids or [])[:MAX_RUNS] if (f := run_features(store, r)) is not None]
        if not frames:
            return {}, None, []
        frame = pd.concat(frames, ignore_index=True)[list(FEATURE_COLUMNS)]
        return (*exports.drawn("compare-features", feature_depth_profile(frame), frame),
                table_records(frame))
