"""Layers: what each layer's attention recovers (paper Supplementary Note 17) over all universe gene pairs, against
protein-interaction pairs (STRING; on the embedded default the simulated network's co-regulated pairs) and the
regulatory references read as pairs, with the depth trends, profile correlations and the expression-controlled
partial correlation; how closely each layer's attention follows expression correlation (registry 17); and the
per-TF bootstrap of the read-out layer (Supplementary Note 14)."""
from __future__ import annotations

import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, dash_table, dcc, html

from analysis.scoring.tf_bootstrap import GLOBAL

from .. import ids
from ..components import figure_card, table_column, table_records
from ..figures import biology_profiles, ci_forest
from ..verdict_view import bottom_line_slot, register_bottom_line

PATH, NAME = "/layers", "Layers"
TEST_COLUMNS = ("analysis", "hypothesis", "effect", "p", "q")
CONTROL_COLUMNS = ("reference", "layer", "r_raw", "r_partial", "retained", "p_partial", "n")
AGREEMENT_COLUMNS = ("layer", "correlation", "rho", "p", "n")


def layout(**_):
    numeric = ("effect", "p", "q", "r_raw", "r_partial", "retained", "p_partial", "rho")
    return dbc.Container([
        html.H3("Layer-wise organisation"),
        bottom_line_slot("layers"),
        html.P("Each layer's head-mean attention scored over every co-observed pair of universe genes, "
               "(A[i, j] + A[j, i]) / 2, against each reference read as undirected pairs (paper SN17). Solid lines: "
               "pair references (STRING protein interactions; on the embedded default the simulated network's "
               "co-regulated gene pairs, since its simulated genes are not in STRING); dashed: regulatory "
               "references.", className="explain"),
        figure_card("layers-biology"),
        html.H5("Depth trends and profile correlations", className="mt-3"),
        dash_table.DataTable(id=ids.LAYERS_TESTS, sort_action="native", page_size=12,
                             columns=[table_column(c, numeric) for c in TEST_COLUMNS],
                             style_table={"overflowX": "auto"}),
        html.H5("Beyond expression similarity", className="mt-3"),
        html.P("Partial Spearman correlation of attention with reference membership controlling for the pair's "
               "expression correlation, on all positive pairs and random negatives (retained = partial / raw); "
               "and each layer's agreement with expression correlation over all pairs.", className="explain"),
        dbc.Row([dbc.Col(dash_table.DataTable(id=ids.LAYERS_CONTROL, sort_action="native", page_size=12,
                                              columns=[table_column(c, numeric) for c in CONTROL_COLUMNS]), md=7),
                 dbc.Col(dash_table.DataTable(id=ids.LAYERS_AGREEMENT, sort_action="native", page_size=12,
                                              columns=[table_column(c, numeric) for c in AGREEMENT_COLUMNS]), md=5)]),
        html.H5("Per-TF bootstrap of the read-out layer", className="mt-4"),
        dbc.Row([dbc.Col([dbc.Label("Reference"), dcc.Dropdown(id=ids.LAYERS_TF_REFERENCE, clearable=False)], md=4),
                 dbc.Col([dbc.Label("Edge source"), dcc.Dropdown(id=ids.LAYERS_TF_SOURCE, clearable=False)], md=4)]),
        html.Div(id=ids.LAYERS_TF_NOTE, className="explain my-2"),
        figure_card("layers-tf-bootstrap"),
    ], fluid=True)


def register(app, store, settings, jobs, exports):
    register_bottom_line(app, store, "layers", ("layer_trend",))
    @app.callback(Output(ids.graph("layers-biology"), "figure"), Output(ids.figdata("layers-biology"), "data"),
                  Output(ids.LAYERS_TESTS, "data"), Output(ids.LAYERS_CONTROL, "data"),
                  Output(ids.LAYERS_AGREEMENT, "data"),
                  Output(ids.LAYERS_TF_REFERENCE, "options"), Output(ids.LAYERS_TF_REFERENCE, "value"),
                  Output(ids.LAYERS_TF_SOURCE, "options"), Output(ids.LAYERS_TF_SOURCE, "value"),
                  Input(ids.RUN_SELECT, "value"))
    def show(run_id):
        if not run_id or not store.has_table(run_id, "layer_biology"):
            return {}, None, [], [], [], [], None, [], None
        profiles = store.table(run_id, "layer_biology")
        reg = store.table(run_id, "statistics_registry")
        tests = reg[reg["analysis"] == "layer_biology"]
        tests = tests[~tests["hypothesis"].str.contains("beyond expression")]
        control = store.table(run_id, "layer_biology_control")
        agreement = store.table(run_id, "attention_expression")
        refs, sources = [], []
        if store.has_table(run_id, "tf_bootstrap"):
            tfb = store.table(run_id, "tf_bootstrap")
            refs, sources = list(dict.fromkeys(tfb["reference"])), list(dict.fromkeys(tfb["label"]))
        return (*exports.drawn("layers-biology", biology_profiles(profiles), profiles),
                table_records(tests[list(TEST_COLUMNS)]), table_records(control[list(CONTROL_COLUMNS)]),
                table_records(agreement[list(AGREEMENT_COLUMNS)]),
                refs, refs[0] if refs else None, sources, sources[0] if sources else None)

    @app.callback(Output(ids.graph("layers-tf-bootstrap"), "figure"),
                  Output(ids.figdata("layers-tf-bootstrap"), "data"), Output(ids.LAYERS_TF_NOTE, "children"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.LAYERS_TF_REFERENCE, "value"),
                  Input(ids.LAYERS_TF_SOURCE, "value"))
    def tf_bootstrap(run_id, reference, source):
        if not run_id or not reference or not store.has_table(run_id, "tf_bootstrap"):
            return {}, None, "This run has no per-TF bootstrap (it resamples CSSI's random groups)."
        sel = store.table(run_id, "tf_bootstrap").query("reference == @reference and label == @source")
        glob, per_tf = sel[sel["tf"] == GLOBAL], sel[sel["tf"] != GLOBAL].sort_values("auroc", ascending=False)
        frame = pd.concat([glob, per_tf], ignore_index=True)
        above = int((per_tf["ci_side"] == "above").sum())
        note = (f"{above} of {len(per_tf)} TFs have a 95% CI entirely above 0.5 "
                f"({int((per_tf['ci_side'] == 'below').sum())} entirely below); {int(sel['n_boot'].iloc[0])} draws of "
                "the random cell groups with replacement (a block bootstrap of cells; it errs towards chance).")
        if len(glob):
            g = glob.iloc[0]
            note = f"Global AUROC {g.auroc:.3f} [{g.ci_low:.3f}, {g.ci_high:.3f}]. " + note
        fig = ci_forest(frame, label="tf", value="auroc", title=f"{source} vs {reference}: per-TF AUROC, 95% CI",
                        x_title="AUROC", null=0.5)
        return (*exports.drawn("layers-tf-bootstrap", fig, frame), note)
