"""Features: the sparse autoencoders of the residual stream (analysis.stages.sae). Per layer, the SAE's
quality (fraction of variance explained, the behaviour read-out with the reconstruction spliced in, dead and dense
features, how many are visible to SVD, with the superposition histogram), a map of its features (how often each
fires against how strongly), a searchable table, a search by gene (the features that fire on it), the co-activation
modules as a graph, each cell programme's best feature against the shuffled-activation null, and the CRISPRi
regulatory test (TFs whose knock-down's responding features prefer their targets, against another TF's targets).
Below: a feature's card (:mod:`app.pages.feature_card`) and live feature intervention
(:mod:`app.pages.feature_edits`)."""
from __future__ import annotations

import dash_bootstrap_components as dbc
import numpy as np
import pandas as pd
from dash import ClientsideFunction, Input, Output, State, dash_table, dcc, html, no_update

from analysis.scoring.sae_features import N_FEATURE_GENES

from .. import ids
from ..components import figure_card, table_column, table_records
from ..figures import feature_map, feature_modules, programme_matches, regulatory_counts, superposition
from ..shell import with_query
from ..verdict_view import bottom_line_slot, register_bottom_line
from . import feature_card, feature_edits

PATH, NAME = "/features", "Features"
COLUMNS = ("feature", "firing_rate", "mean_activation", "max_svd_cos", "dead", "dense", "module", "top_genes")
GENE_COLUMNS = ("feature", "mean_on_gene", "gene_rank", "firing_rate", "top_genes")
REGULATORY_COLUMNS = ("tf", "n_perturbed", "preference", "null_preference", "p", "q", "passes", "overlap",
                      "expected", "p_hypergeom", "rotated_tf", "rotated_q")
N_GENE_FEATURES = 20


def linked_feature(layer, feature) -> dict | None:
    """The ``{layer, feature}`` of a link's query (``?layer=1&feature=12``), or None when either is missing or not
    a whole number (a link is text from anywhere: nothing of it is evaluated)."""
    try:
        return {"layer": int(layer), "feature": int(feature)} if layer is not None and feature is not None else None
    except (TypeError, ValueError):
        return None


def layout(layer=None, feature=None, **_):
    return dbc.Container([
        dcc.Store(id=ids.FEATURES_LINK, data=linked_feature(layer, feature)),
        html.H3("Residual-stream features (sparse autoencoders)"),
        bottom_line_slot("features"),
        html.Div(id=ids.FEATURES_NOTE, className="explain mb-2"),
        dbc.Row([dbc.Col([dbc.Label("Layer"), dcc.Dropdown(id=ids.FEATURES_LAYER, clearable=False)], md=3)]),
        dbc.Row([dbc.Col(figure_card("features-map"), lg=4), dbc.Col(figure_card("features-superposition"), lg=4),
                 dbc.Col(figure_card("features-programmes"), lg=4)]),
        html.H5("Features (sort, or filter: e.g. a gene symbol in top_genes)", className="mt-2"),
        dash_table.DataTable(id=ids.FEATURES_TABLE, page_size=12, sort_action="native", filter_action="native",
                             columns=[table_column(c, ("firing_rate", "mean_activation", "max_svd_cos"))
                                      for c in COLUMNS], style_table={"overflowX": "auto"}),
        dbc.Row([dbc.Col([dbc.Label("Search by gene: the features that fire on it (mean activation over its "
                                    "positions)"), dcc.Dropdown(id=ids.FEATURES_GENE)], md=4)], className="mt-3"),
        dash_table.DataTable(id=ids.FEATURES_GENE_TABLE, page_size=8, sort_action="native",
                             columns=[table_column(c, ("mean_on_gene", "firing_rate")) for c in GENE_COLUMNS],
                             style_table={"overflowX": "auto"}),
        dbc.Row([dbc.Col(figure_card("features-modules"), lg=6), dbc.Col(figure_card("features-regulatory"), lg=6)],
                className="mt-3"),
        html.Div(id=ids.FEATURES_REGULATORY_NOTE, className="explain mb-1"),
        dash_table.DataTable(id=ids.FEATURES_REGULATORY, page_size=8, sort_action="native",
                             columns=[table_column(c, ("preference", "null_preference", "p", "q", "expected",
                                                       "p_hypergeom", "rotated_q")) for c in REGULATORY_COLUMNS],
                             style_table={"overflowX": "auto"}),
        *feature_card.section(),
        dcc.Store(id=ids.FEATURES_SELECTED), html.Div(id=ids.FEATURES_CARD_SHOWN, hidden=True),
        *feature_edits.section(N_FEATURE_GENES),
    ], fluid=True)


def layer_note(row: pd.Series, family: str) -> str:
    return (f"L{int(row['layer'])}: {int(row['n_features'])} features (k = {int(row['k'])} active per gene position) "
            f"trained on {int(row['n_rows']):,} gene positions of {int(row['n_cells'])} cells; fraction of variance "
            f"explained {row['fraction_variance_explained']:.3f}; {family} behaviour read-out "
            f"{row['behaviour_loss']:.4g} -> {row['behaviour_loss_spliced']:.4g} with the reconstruction spliced in; "
            f"{int(row['n_dead'])} dead, {int(row['n_dense'])} dense; {int(row['n_svd_visible'])} "
            f"feature{'' if int(row['n_svd_visible']) == 1 else 's'} aligned with one of the top {int(row['svd_directions'])} singular directions (visible to SVD); "
            f"{int(row['n_modules'])} co-activation modules; causal specificity "
            + (f"{row['causal_specificity']:.2f}x (median over {int(row['specificity_features'])} features ablated "
               "alone: their own genes' prediction change over the rest's)." if np.isfinite(row["causal_specificity"])
               else "not measured at the last layer (an edit there moves only the positions it edits)."))


def features_on_gene(means: np.ndarray, symbols: np.ndarray, features: pd.DataFrame, symbol: str) -> pd.DataFrame:
    """The :data:`N_GENE_FEATURES` features of one layer most active on ``symbol`` (``means`` ``[F, G]``), with the
    gene's rank among each feature's genes (1: its strongest)."""
    g = int(np.flatnonzero(symbols == symbol)[0])
    order = np.argsort(-means[:, g], kind="stable")[:N_GENE_FEATURES]
    order = order[means[order, g] > 0]
    rank = (means[order] > means[order, g][:, None]).sum(axis=1) + 1
    info = features.set_index("feature").loc[order]
    return pd.DataFrame({"feature": order, "mean_on_gene": means[order, g], "gene_rank": rank,
                         "firing_rate": info["firing_rate"].to_numpy(), "top_genes": info["top_genes"].to_numpy()})


def register(app, store, settings, jobs, exports):
    register_bottom_line(app, store, "features", ("sae_specificity",))
    feature_card.register(app, store, settings, jobs, exports)
    feature_edits.register(app, store, settings, jobs, exports, n_own=N_FEATURE_GENES)

    @app.callback(Output(ids.FEATURES_LAYER, "options"), Output(ids.FEATURES_LAYER, "value"),
                  Input(ids.RUN_SELECT, "value"), State(ids.FEATURES_LINK, "data"))
    def layers(run_id, link):
        """The run's SAE layers; the page opens on a link's layer, else the read-out layer."""
        if not run_id or not store.has_table(run_id, "sae_layers"):
            return [], None
        layer_ids = [int(x) for x in store.table(run_id, "sae_layers")["layer"]]
        readout = store.manifest(run_id).readout_layer
        first = link["layer"] if link and link["layer"] in layer_ids else readout if readout in layer_ids \
            else layer_ids[0]
        return [{"label": f"L{x}", "value": x} for x in layer_ids], first

    @app.callback(Output(ids.RUN_URL, "search", allow_duplicate=True), Input(ids.FEATURES_SELECTED, "data"),
                  State(ids.RUN_URL, "search"), prevent_initial_call=True)
    def feature_in_url(selected, search):
        """The open card's feature goes into the URL, so it has a link of its own."""
        if not selected:
            return no_update
        return with_query(search, layer=selected["layer"], feature=selected["feature"])

    app.clientside_callback(ClientsideFunction("explorer", "scrollIntoView"),
                            Output(ids.FEATURES_CARD_SHOWN, "children"), Input(ids.FEATURES_CARD_TITLE, "children"),
                            State(ids.FEATURES_CARD_TITLE, "id"), prevent_initial_call=True)

    @app.callback(Output(ids.FEATURES_NOTE, "children"), Output(ids.graph("features-map"), "figure"),
                  Output(ids.figdata("features-map"), "data"), Output(ids.FEATURES_TABLE, "data"),
                  Output(ids.graph("features-programmes"), "figure"),
                  Output(ids.figdata("features-programmes"), "data"), Output(ids.graph("features-modules"), "figure"),
                  Output(ids.figdata("features-modules"), "data"),
                  Output(ids.graph("features-superposition"), "figure"),
                  Output(ids.figdata("features-superposition"), "data"), Output(ids.FEATURES_GENE, "options"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.FEATURES_LAYER, "value"))
    def show(run_id, layer):
        if not run_id or not store.has_table(run_id, "sae_layers"):
            return ("This run has no SAEs of the residual stream (precompute's sae.run: on for the embedded "
                    "models; --set sae.run=on for your own).", {}, None, [], {}, None, {}, None, {}, None, [])
        if layer is None:
            return no_update, {}, None, [], {}, None, {}, None, {}, None, []
        m = store.manifest(run_id)
        summary = store.table(run_id, "sae_layers").set_index("layer", drop=False).loc[layer]
        feats = store.table(run_id, "sae_features").query("layer == @layer")
        table = table_records(feats[list(COLUMNS)].assign(id=feats["feature"]))
        progs = (store.table(run_id, "sae_programmes").query("layer == @layer")
                 if store.has_table(run_id, "sae_programmes") else pd.DataFrame())
        prog_fig = programme_matches(progs, layer=layer) if len(progs) else {}
        edges = store.table(run_id, "sae_coactivation").query("layer == @layer")
        _means, symbols = store.sae_gene_means(run_id, layer)
        return (layer_note(summary, m.family), *exports.drawn("features-map", feature_map(feats, layer=layer), feats),
                table, *exports.drawn("features-programmes", prog_fig, progs),
                *exports.drawn("features-modules", feature_modules(feats, edges, layer=layer),
                               feats[feats["module_x"].notna()]),
                *exports.drawn("features-superposition", superposition(
                    feats, layer=layer, threshold=m.config.sae.svd_cos, directions=int(summary["svd_directions"])),
                    feats[["layer", "feature", "max_svd_cos", "svd_visible", "dead"]]), sorted(map(str, symbols)))

    @app.callback(Output(ids.FEATURES_GENE_TABLE, "data"), Input(ids.FEATURES_GENE, "value"),
                  Input(ids.FEATURES_LAYER, "value"), Input(ids.RUN_SELECT, "value"))
    def gene_search(symbol, layer, run_id):
        if not symbol or layer is None or not run_id or not store.has_table(run_id, "sae_layers"):
            return []
        means, symbols = store.sae_gene_means(run_id, layer)
        if symbol not in set(symbols):
            return []
        feats = store.table(run_id, "sae_features").query("layer == @layer")
        found = features_on_gene(means, symbols, feats, symbol)
        return table_records(found.assign(id=found["feature"]))

    @app.callback(Output(ids.graph("features-regulatory"), "figure"),
                  Output(ids.figdata("features-regulatory"), "data"),
                  Output(ids.FEATURES_REGULATORY, "data"), Output(ids.FEATURES_REGULATORY_NOTE, "children"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.FEATURES_LAYER, "value"))
    def regulatory(run_id, layer):
        if not run_id or not store.has_table(run_id, "sae_regulatory"):
            return {}, None, [], ("No CRISPRi regulatory test in this run (it needs knock-downs of reference TFs "
                                  "with targets among the captured genes).")
        table = store.table(run_id, "sae_regulatory")
        here = table[table["layer"] == layer]
        note = (f"L{layer}: {int(here['passes'].sum())} of {len(here)} knocked-down TFs pass (their "
                f"{int(here['n_responding'].max()) if len(here) else 0} most responding features prefer the TF's "
                f"targets, BH q < 0.05 against random feature sets); {int(here['rotated_passes'].sum())} pass with "
                "another TF's targets. The companion paper found 3 of 48 TFs in Geneformer V2-316M on a genome-scale "
                "screen. Read a pass as a response specific to the TF's targets, not as regulation the model inferred: "
                "the knock-down is already in the input (the targets' expression falls), so features keyed to those "
                "genes respond wherever the data's effect is strong, as in the embedded simulation.")
        return (*exports.drawn("features-regulatory", regulatory_counts(table), table),
                table_records(here[list(REGULATORY_COLUMNS)]), note)
