"""Features: the sparse autoencoders of the residual stream (issue 14; analysis.stages.sae). Per layer, the SAE's
quality (fraction of variance explained, the behaviour read-out with the reconstruction spliced in, dead and dense
features, how many are visible to SVD), a map of its features (how often each fires against how strongly), a
searchable table (type a gene in the top-genes filter), each cell programme's best feature against the
shuffled-activation null, and a feature's card: the genes it fires on, the reference regulons over-represented
among its top genes (hypergeometric, BH over the layer's features x regulons), and its neighbours in the other
layers (activation correlation over the same gene positions); below it, live feature intervention
(:mod:`app.pages.feature_edits`)."""
from __future__ import annotations

import dash_bootstrap_components as dbc
import numpy as np
import pandas as pd
from dash import Input, Output, State, ctx, dash_table, dcc, html, no_update

from analysis.scoring.sae_features import N_FEATURE_GENES

from .. import ids
from ..components import figure_card, table_column, without_zero_p
from ..figures import feature_genes, feature_map, programme_matches
from . import feature_edits

PATH, NAME = "/features", "Features"
COLUMNS = ("feature", "firing_rate", "mean_activation", "max_svd_cos", "dead", "dense", "top_genes")
ENRICHMENT_COLUMNS = ("gene_set", "overlap", "feature_genes", "set_genes", "universe", "fold", "p", "q")


def layout(**_):
    return dbc.Container([
        html.H3("Residual-stream features (sparse autoencoders)"),
        html.Div(id=ids.FEATURES_NOTE, className="explain mb-2"),
        dbc.Row([dbc.Col([dbc.Label("Layer"), dcc.Dropdown(id=ids.FEATURES_LAYER, clearable=False)], md=3)]),
        dbc.Row([dbc.Col(figure_card("features-map"), md=6), dbc.Col(figure_card("features-programmes"), md=6)]),
        html.H5("Features (sort, or filter: e.g. a gene symbol in top_genes)", className="mt-2"),
        dash_table.DataTable(id=ids.FEATURES_TABLE, page_size=12, sort_action="native", filter_action="native",
                             columns=[table_column(c, ("firing_rate", "mean_activation", "max_svd_cos"))
                                      for c in COLUMNS], style_table={"overflowX": "auto"}),
        html.H5(id=ids.FEATURES_CARD_TITLE, className="mt-3"),
        figure_card("features-card", placeholder="Click a feature on the map or in the table"),
        html.H6(f"Reference regulons among the feature's top {N_FEATURE_GENES} genes (BH over every feature x regulon of "
                "the layer)", className="mt-2"),
        dash_table.DataTable(id=ids.FEATURES_ENRICHMENT, page_size=8, sort_action="native",
                             columns=[table_column(c, ("fold", "p", "q")) for c in ENRICHMENT_COLUMNS],
                             style_table={"overflowX": "auto"}),
        html.H6("Neighbours in the other layers (Pearson r of activations over the same gene positions)",
                className="mt-2"),
        dash_table.DataTable(id=ids.FEATURES_NEIGHBOURS, page_size=12, sort_action="native",
                             columns=[table_column(c, ("r",)) for c in ("layer", "feature", "r")],
                             style_table={"overflowX": "auto"}),
        dcc.Store(id=ids.FEATURES_SELECTED),
        *feature_edits.section(N_FEATURE_GENES),
    ], fluid=True)


def layer_note(row: pd.Series, family: str) -> str:
    return (f"L{int(row['layer'])}: {int(row['n_features'])} features (k = {int(row['k'])} active per gene position) "
            f"trained on {int(row['n_rows']):,} gene positions of {int(row['n_cells'])} cells; fraction of variance "
            f"explained {row['fraction_variance_explained']:.3f}; {family} behaviour read-out "
            f"{row['behaviour_loss']:.4g} -> {row['behaviour_loss_spliced']:.4g} with the reconstruction spliced in; "
            f"{int(row['n_dead'])} dead, {int(row['n_dense'])} dense; {int(row['n_svd_visible'])} features aligned "
            f"with one of the top {int(row['svd_directions'])} singular directions (visible to SVD).")


def register(app, store, settings, jobs, exports):
    feature_edits.register(app, store, settings, jobs, exports, n_own=N_FEATURE_GENES)

    @app.callback(Output(ids.FEATURES_LAYER, "options"), Output(ids.FEATURES_LAYER, "value"),
                  Input(ids.RUN_SELECT, "value"))
    def layers(run_id):
        if not run_id or not store.has_table(run_id, "sae_layers"):
            return [], None
        layer_ids = [int(x) for x in store.table(run_id, "sae_layers")["layer"]]
        readout = store.manifest(run_id).readout_layer
        return [{"label": f"L{x}", "value": x} for x in layer_ids], readout if readout in layer_ids else layer_ids[0]

    @app.callback(Output(ids.FEATURES_NOTE, "children"), Output(ids.graph("features-map"), "figure"),
                  Output(ids.figdata("features-map"), "data"), Output(ids.FEATURES_TABLE, "data"),
                  Output(ids.graph("features-programmes"), "figure"), Output(ids.figdata("features-programmes"), "data"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.FEATURES_LAYER, "value"))
    def show(run_id, layer):
        if not run_id or not store.has_table(run_id, "sae_layers"):
            return ("This run has no SAEs of the residual stream (precompute's sae.run: on for the embedded "
                    "models; --set sae.run=on for your own).", {}, None, [], {}, None)
        if layer is None:
            return no_update, {}, None, [], {}, None
        m = store.manifest(run_id)
        summary = store.table(run_id, "sae_layers").set_index("layer", drop=False).loc[layer]
        feats = store.table(run_id, "sae_features").query("layer == @layer")
        table = feats[list(COLUMNS)].assign(id=feats["feature"]).round(5).to_dict("records")
        progs = (store.table(run_id, "sae_programmes").query("layer == @layer")
                 if store.has_table(run_id, "sae_programmes") else pd.DataFrame())
        prog_fig = programme_matches(progs, layer=layer) if len(progs) else {}
        return (layer_note(summary, m.family), *exports.drawn("features-map", feature_map(feats, layer=layer), feats),
                table, *exports.drawn("features-programmes", prog_fig, progs))

    @app.callback(Output(ids.FEATURES_CARD_TITLE, "children"), Output(ids.graph("features-card"), "figure"),
                  Output(ids.figdata("features-card"), "data"), Output(ids.FEATURES_ENRICHMENT, "data"),
                  Output(ids.FEATURES_NEIGHBOURS, "data"), Output(ids.FEATURES_SELECTED, "data"),
                  Input(ids.graph("features-map"), "clickData"), Input(ids.FEATURES_TABLE, "active_cell"),
                  State(ids.RUN_SELECT, "value"), State(ids.FEATURES_LAYER, "value"), prevent_initial_call=True)
    def card(click, cell, run_id, layer):
        """A feature picked on the map (its point) or in the table (its row): the genes it fires on."""
        if ctx.triggered_id == ids.FEATURES_TABLE:
            feature = cell.get("row_id") if cell else None
        else:
            feature = click["points"][0].get("customdata") if click and click.get("points") else None
        if feature is None or run_id is None or layer is None:
            return (no_update,) * 6
        feature = int(feature)
        means, symbols = store.sae_gene_means(run_id, layer)
        order = np.argsort(-means[feature], kind="stable")[:N_FEATURE_GENES]
        order = order[means[feature][order] > 0]
        genes = pd.DataFrame({"symbol": symbols[order], "mean_activation": means[feature][order]})
        row = store.table(run_id, "sae_features").query("layer == @layer and feature == @feature").iloc[0]
        title = (f"L{layer} feature {feature}: fires on {row['firing_rate']:.2%} of gene positions"
                 + (" (dead)" if row["dead"] else "") + (" (dense)" if row["dense"] else ""))
        enriched = store.sae_enrichment(run_id, layer, N_FEATURE_GENES)
        enriched = enriched[enriched["feature"] == feature][list(ENRICHMENT_COLUMNS)]
        return (title, *exports.drawn("features-card", feature_genes(genes, layer=layer, feature=feature), genes),
                without_zero_p(enriched, ("p", "q")).to_dict("records"),
                store.sae_neighbours(run_id, layer, feature).to_dict("records"), {"layer": layer, "feature": feature})
