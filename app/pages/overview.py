"""Run overview: the answer first (the verdict panel: does attention carry regulatory signal in this run, question by
question, each verdict computed from the registry with its test, the paper's finding beside it and a link to the
page that shows it; then the paper's claims restated as what they say about the model), then what was run (model,
data, references, config hash), how long each stage took, and the best heads."""
from __future__ import annotations

import dash_bootstrap_components as dbc
from dash import Input, Output, dash_table, dcc, html

from .. import ids
from ..components import figure_card, table_column, table_records
from ..figures import layer_profile, layer_profile_series
from ..verdict_view import verdict_panel

PATH, NAME = "/", "Run overview"
BEST_COLUMNS = ("layer", "head", "auroc", "ci_low", "ci_high", "p", "q", "n_pos", "n_neg")
BEST_NUMERIC = ("auroc", "ci_low", "ci_high", "p", "q")


def layout(**_):
    return dbc.Container([
        html.H3("Run overview"),
        dcc.Loading(html.Div(id=ids.OVERVIEW_PANEL)),
        html.H4("What was run", className="mt-3"),
        html.Div(id=ids.OVERVIEW_SUMMARY),
        figure_card("overview-layer-profile", "Per layer: the best and median head, the layer-mean attention, the "
                    "Spearman-correlation baseline on the same gene pairs, and chance."),
        html.H5("Best heads (AUROC, first reference, TF -> target)"),
        dash_table.DataTable(id=ids.OVERVIEW_BEST, page_size=10, sort_action="native",
                             columns=[table_column(c, BEST_NUMERIC) for c in BEST_COLUMNS],
                             style_table={"overflowX": "auto"}),
    ], fluid=True)


def register(app, store, settings, jobs, exports):
    @app.callback(Output(ids.OVERVIEW_PANEL, "children"), Input(ids.RUN_SELECT, "value"))
    def panel(run_id):
        return verdict_panel(store, run_id) if run_id else None

    @app.callback(Output(ids.OVERVIEW_SUMMARY, "children"), Output(ids.graph("overview-layer-profile"), "figure"),
                  Output(ids.figdata("overview-layer-profile"), "data"), Output(ids.OVERVIEW_BEST, "data"),
                  Input(ids.RUN_SELECT, "value"))
    def show(run_id):
        if not run_id:
            return dbc.Alert("No run in the cache yet: run `python precompute.py` first.", color="warning"), {}, [], []
        m = store.manifest(run_id)
        ranking = store.ranking(run_id)
        ref = m.reference_names[0]
        sel = ranking[(ranking["reference"] == ref) & (ranking["direction"] == "tf_to_target")
                      & (ranking["metric"] == "auroc")]
        timings = ", ".join(f"{t['stage']} {t['seconds']:.1f}s" + (" (cached)" if t["skipped"] else "")
                            for t in m.stage_timings)
        model, tok = m.model, m.tokenizer
        summary = dbc.Card(dbc.CardBody([
            html.P([html.B("Run "), html.Code(m.run_id), " - config hash ", html.Code(m.config_hash[:12])]),
            html.P(f"Model family {model.family}: {model.name}, {model.n_layers} layers x {model.n_heads} heads "
                   f"(d_head {model.d_head}, max {model.max_len} tokens) on {model.device}"
                   + (" - RANDOM WEIGHTS" if model.random_init else "")),
            html.P(f"Tokenisation: {tok.get('method')}" + (f", mode {tok['mode']}, {tok['n_bins']} bins, <cls> value "
                                                            f"{tok['cls_value']}" if "mode" in tok else "")
                   + f"; cell embedding {model.native_embedding}; behaviour read-out: "
                     f"{m.readout_label('mlm_loss')}"),
            html.P(f"Data: {m.data.n_cells} cells, {m.data.n_vocab_genes} genes in the vocabulary, "
                   f"panel of {m.data.panel_size} genes; {len(m.data.perturbations)} perturbations; counts from "
                   f"{m.data.counts_source}"),
            html.P("References: " + "; ".join(f"{r['name']} ({r['n_edges']} edges)" for r in m.references)),
            html.P(f"Stages: {timings}; total {m.wall_seconds}s"),
        ]), className="mb-3")
        fig = layer_profile(sel, metric="auroc", reference=ref, direction="tf_to_target")
        best = (sel[sel["edge_type"] == "attention"].sort_values("value", ascending=False).head(10)
                .rename(columns={"value": "auroc"})[list(BEST_COLUMNS)])
        series = layer_profile_series(sel, metric="auroc")
        return summary, fig, exports.publish("overview-layer-profile", fig, series), table_records(best)
