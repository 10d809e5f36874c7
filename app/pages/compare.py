"""Compare: two or more runs (any models, any datasets) side by side. Reference recovery of every layer re-scored on
the genes all chosen runs share, on a relative-depth axis, with each run's correlation baseline; perturbation-first
AUROC per layer with correlation and the variance baseline; each run's confound numbers in one table
(:mod:`analysis.scoring.compare`)."""
from __future__ import annotations

import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, dash_table, dcc, html

from analysis.io.references import ReferenceNetwork
from analysis.scoring.compare import confound_summary, layer_recovery, shared_symbols

from .. import ids
from ..components import figure_card, table_column, without_zero_p
from ..figures import compare_layer_profiles

PATH, NAME = "/compare", "Compare"
SUMMARY_TABLES = ("incremental_value", "incremental_value_matched", "residualisation", "degree_null", "cssi_curve",
                  "ablation_results")
MAX_RUNS = 6
FIGURES = ("compare-layers", "compare-perturbation")   # each spans several runs (app.main's export names none)
TABLE_COLUMNS = ("run", "model", "cells", "incremental_delta", "incremental_ci", "matched_delta", "matched_ci",
                 "retained_attention", "retained_correlation", "degree_excess", "degree_p", "cssi_gain",
                 "ablation_top_k", "ablation_delta", "ablation_p")
NUMERIC = tuple(c for c in TABLE_COLUMNS if c not in ("run", "model", "cells", "incremental_ci", "matched_ci"))


def layout(**_):
    return dbc.Container([
        html.H3("Compare runs"),
        html.P("Pick two or more runs. Reference recovery is re-scored on the genes every chosen run's panel holds, "
               "so the AUROCs count the same candidate pairs; layers are placed at relative depth so models of "
               "different depth line up. Dashed lines: each run's correlation baseline.", className="explain"),
        dbc.Row([dbc.Col([dbc.Label("Runs"), dcc.Dropdown(id=ids.COMPARE_RUNS, multi=True)], md=8),
                 dbc.Col([dbc.Label("Reference"), dcc.Dropdown(id=ids.COMPARE_REFERENCE, clearable=False)], md=4)]),
        html.Div(id=ids.COMPARE_NOTE, className="explain my-2"),
        dbc.Row([dbc.Col(figure_card("compare-layers"), md=6), dbc.Col(figure_card("compare-perturbation"), md=6)]),
        html.H5("Confound battery, one row per run", className="mt-3"),
        html.P("incremental / matched: gene + attention minus gene-only AUROC (GroupKFold by perturbation, logistic; "
               "95% perturbation-bootstrap CI); retained: share of above-chance reference AUROC left after OLS "
               "residualisation on expression covariates; degree excess: AUROC above the curveball degree-preserving "
               "null; CSSI gain: CSSI-max minus pooled AUROC of the read-out layer at the pre-specified number of "
               "strata; ablation: change of the masked-behaviour loss when the largest top-k set is zeroed.",
               className="explain"),
        dash_table.DataTable(id=ids.COMPARE_TABLE, sort_action="native", style_table={"overflowX": "auto"},
                             columns=[table_column(c, NUMERIC) for c in TABLE_COLUMNS]),
    ], fluid=True)


def register(app, store, settings, jobs, exports):
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
                  Input(ids.COMPARE_RUNS, "value"), Input(ids.COMPARE_REFERENCE, "value"))
    def compare(run_ids, reference):
        if not run_ids or len(run_ids) < 2:
            return {}, [], {}, [], [], "Pick at least two runs."
        if len(run_ids) > MAX_RUNS:
            return {}, [], {}, [], [], f"Pick at most {MAX_RUNS} runs."
        if not reference:
            return {}, [], {}, [], [], "The chosen runs share no reference network."
        symbols = shared_symbols([store.panel(r) for r in run_ids])
        recovery, perturbation, rows = [], [], []
        for run_id in run_ids:
            m = store.manifest(run_id)
            label = f"{m.family} {run_id.split('-')[-1]}"
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
            tables = {t: store.table(run_id, t) for t in SUMMARY_TABLES if store.has_table(run_id, t)}
            summary = confound_summary(tables, readout_layer=m.readout_layer,
                                       primary_n_strata=m.config.cssi.primary_n_strata)
            rows.append({"run": label, "model": m.model.name, "cells": m.data.cells_line, **summary})
        recovery = pd.concat(recovery, ignore_index=True)
        layers_fig = compare_layer_profiles(recovery, value="auroc", y_title=f"AUROC vs {reference} (TF -> target)",
                                            title=f"Reference recovery by depth on {len(symbols)} shared genes")
        out = [*exports.drawn("compare-layers", layers_fig, recovery)]
        if perturbation:
            pert = pd.concat(perturbation, ignore_index=True)
            fig = compare_layer_profiles(pert, value="auroc", y_title="mean per-perturbation AUROC",
                                         title="Perturbation-first AUROC by depth (each run's own perturbations)")
            out += [*exports.drawn("compare-perturbation", fig, pert)]
        else:
            out += [{}, []]
        table = without_zero_p(pd.DataFrame(rows), ("degree_p", "ablation_p")).to_dict("records")
        n_pos = recovery.groupby("run")["n_pos"].first().to_dict()
        note = (f"{len(symbols)} genes are in every chosen run's panel; {reference} positive pairs among them: "
                + ", ".join(f"{r} {int(n)}" for r, n in n_pos.items()) + ".")
        return (*out, table, note)
