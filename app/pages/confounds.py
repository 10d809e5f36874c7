"""Confounds: incremental value over gene-level features under three splits and two model families,
residualisation, propensity matching, the degree-preserving null decomposition and each TF's excess over it."""
from __future__ import annotations

import dash_bootstrap_components as dbc
from dash import Input, Output, dash_table, dcc, html

from .. import ids
from ..components import figure_card, float_columns, table_column, table_records
from ..figures import balance_plot, degree_decomposition, incremental_deltas, residualisation_bars
from ..verdict_view import bottom_line_slot, register_bottom_line

PATH, NAME = "/confounds", "Confounds"
METRICS = {"auroc": "AUROC", "auprc": "AUPRC", "recall_at_10": "recall@10"}
PROPENSITY_COLUMNS = ("edge", "auroc_unmatched", "auroc_matched", "n_pairs")
MATCHED_COLUMNS = ("model", "feature_set", "value", "delta", "delta_ci_low", "delta_ci_high", "p_delta", "n_obs")


def layout(**_):
    return dbc.Container([
        html.H3("Confound decomposition"),
        bottom_line_slot("confounds"),
        html.P("Do edge scores add anything beyond gene-level features (mean, variance, detection of the target)? "
               "Rows named sim_* are the embedded simulation's planted controls: an oracle edge with real pairwise "
               "signal and a gene-level-only edge.", className="explain"),
        dbc.Row([dbc.Col([dbc.Label("Metric"), dcc.RadioItems(
            id=ids.CONF_METRIC, value="auroc", inline=True, inputStyle={"marginRight": "4px", "marginLeft": "10px"},
            options=[{"label": v, "value": k} for k, v in METRICS.items()])])]),
        html.Div(id=ids.CONF_NOTE, className="explain"),
        figure_card("conf-incremental"),
        dbc.Row([dbc.Col(figure_card("conf-residual"), lg=6), dbc.Col(figure_card("conf-degree"), lg=6)]),
        dbc.Row([dbc.Col(figure_card("conf-balance"), lg=6),
                 dbc.Col([html.H6("Edge AUROC on the propensity-matched set"),
                          dash_table.DataTable(id=ids.CONF_PROPENSITY, columns=[table_column(
                              c, PROPENSITY_COLUMNS[1:3]) for c in PROPENSITY_COLUMNS])], lg=6)]),
        html.H6("Incremental value on the propensity-matched set (SN14.8; the paper's \"exactly zero\")",
                className="mt-3"),
        html.P("Gene-level features alone vs gene-level features + each edge, on DE-positive targets matched 1:1 to "
               "DE-negative targets of the same perturbation with similar mean, variance and detection; GroupKFold by "
               "perturbation; delta = gene + edge - gene, 95% CI from 200 perturbation bootstraps.", className="explain"),
        dash_table.DataTable(id=ids.CONF_MATCHED, sort_action="native", page_size=20,
                             columns=[table_column(c, MATCHED_COLUMNS[2:7]) for c in MATCHED_COLUMNS]),
        html.H6("Each TF against the degree-preserving null (SN16.2 registry 16)", className="mt-3"),
        html.P(id=ids.CONF_PER_TF_NOTE, className="explain"),
        dash_table.DataTable(id=ids.CONF_PER_TF, sort_action="native", filter_action="native", page_size=15,
                             style_table={"overflowX": "auto"}),
    ], fluid=True)


def register(app, store, settings, jobs, exports):
    register_bottom_line(app, store, "confounds", ("degree", "incremental", "confounding"))

    @app.callback(Output(ids.graph("conf-incremental"), "figure"), Output(ids.figdata("conf-incremental"), "data"),
                  Output(ids.CONF_NOTE, "children"), Input(ids.RUN_SELECT, "value"), Input(ids.CONF_METRIC, "value"))
    def incremental(run_id, metric):
        if not run_id or not store.has_table(run_id, "incremental_value"):
            return {}, [], ("This run has no perturbation data (or too few perturbations), so no incremental value; "
                            "residualisation and the degree null below need only a reference.")
        inc = store.table(run_id, "incremental_value")
        rows = inc[(inc["metric"] == metric) & inc["feature_set"].str.startswith("gene+")]
        gene_only = inc[(inc["metric"] == metric) & (inc["feature_set"] == "gene")]
        note = "Gene-only " + ", ".join(f"{r.split}/{r.model} {r.value:.3f}" for r in gene_only.itertuples()) + (
            power_note(inc) if metric == "auroc" else "")
        return (*exports.drawn("conf-incremental", incremental_deltas(rows, metric=metric), inc[inc["metric"] == metric]),
                note)

    @app.callback(Output(ids.graph("conf-residual"), "figure"), Output(ids.figdata("conf-residual"), "data"),
                  Output(ids.graph("conf-degree"), "figure"), Output(ids.figdata("conf-degree"), "data"),
                  Output(ids.graph("conf-balance"), "figure"), Output(ids.figdata("conf-balance"), "data"),
                  Output(ids.CONF_PROPENSITY, "data"), Input(ids.RUN_SELECT, "value"))
    def others(run_id):
        """Residualisation and the degree null (any run with a reference pair in the panel, atlas data included);
        propensity matching (perturbation data only)."""
        out = [{}, [], {}, [], {}, [], []]
        if run_id and store.has_table(run_id, "residualisation"):
            res, deg = store.table(run_id, "residualisation"), store.table(run_id, "degree_null")
            out[0:4] = [*exports.drawn("conf-residual", residualisation_bars(res), res),
                        *exports.drawn("conf-degree", degree_decomposition(deg), deg)]
        if run_id and store.has_table(run_id, "propensity"):
            bal, prop = store.table(run_id, "propensity_balance"), store.table(run_id, "propensity")
            out[4:7] = [*exports.drawn("conf-balance", balance_plot(bal), bal),
                        table_records(prop[list(PROPENSITY_COLUMNS)])]
        return tuple(out)

    @app.callback(Output(ids.CONF_PER_TF, "data"), Output(ids.CONF_PER_TF, "columns"), Output(ids.CONF_PER_TF_NOTE,
                                                                                               "children"),
                  Input(ids.RUN_SELECT, "value"))
    def per_tf(run_id):
        """Each TF's AUROC, its own curveball mean and excess, and within-TF precision@k beside chance."""
        if not run_id or not store.has_table(run_id, "degree_null_per_tf"):
            return [], [], "This run has no per-TF degree null (no reference TF with a target in the panel)."
        table = store.table(run_id, "degree_null_per_tf")
        above = table.assign(positive=table["excess"] > 0).groupby(["reference", "edge"]).agg(
            tfs=("tf", "size"), above=("positive", "sum"), excess=("excess", "mean"))
        note = ("Per TF: its AUROC minus its mean under the same curveball draws (excess), and the precision of its "
                "top-k genes (k = its targets) beside chance. " + "; ".join(
                    f"{edge} vs {ref}: {r.above} of {r.tfs} TFs above their degree null, mean excess {r.excess:.3f}"
                    for (ref, edge), r in above.iterrows()) + ".")
        columns = [table_column(c, float_columns(table)) for c in table.columns]
        return table_records(table), columns, note

    @app.callback(Output(ids.CONF_MATCHED, "data"), Input(ids.RUN_SELECT, "value"), Input(ids.CONF_METRIC, "value"))
    def matched(run_id, metric):
        if not run_id or not store.has_table(run_id, "incremental_value_matched"):
            return []
        inc = store.table(run_id, "incremental_value_matched")
        return table_records(inc[inc["metric"] == metric][list(MATCHED_COLUMNS)])


def power_note(inc) -> str:
    """Registry 26's power analysis and TF-stratified gene-only AUROC, from the ``incremental_value`` table: the
    smallest gain each primary test detects with 80% power, and gene-only AUROC within TF and non-TF perturbations."""
    primary = inc[(inc["split"] == "perturbation") & (inc["model"] == "logistic") & (inc["metric"] == "auroc")]
    gains = primary[primary["feature_set"].isin(["gene+attention", "gene+correlation"])
                    & primary["min_detectable_delta"].notna()]
    out = ""
    if len(gains):
        out += (". Power (80%, one-sided alpha 0.05, perturbation split, logistic): the smallest detectable gain is "
                + ", ".join(f"{r.feature_set} {r.min_detectable_delta:.4f} AUROC" for r in gains.itertuples()))
    gene = inc[(inc["split"] == "perturbation") & (inc["model"] == "logistic") & (inc["feature_set"] == "gene")
               ].set_index("metric")
    if {"auroc_tf", "auroc_non_tf"} <= set(gene.index):
        out += (f". Gene-only AUROC on TF perturbations {gene.loc['auroc_tf', 'value']:.3f} "
                f"({int(gene.loc['auroc_tf', 'n_obs'])} observations), on non-TF ones "
                f"{gene.loc['auroc_non_tf', 'value']:.3f}")
    return out + "." if out else ""

