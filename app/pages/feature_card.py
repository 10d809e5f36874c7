"""The Features page's feature card: a feature picked on the map, the table, the co-activation graph or the
gene search opens it. Where it fires (its genes by mean activation over their positions, and genes x cells), the
reference regulons and pair-reference neighbourhoods over-represented among its top genes (hypergeometric, BH over
the layer's features x sets), the cell states over-represented among its most active cells (BH over the states), the
knock-downs it responds to (the regulatory test's responding features) and its neighbours in the other layers
(activation correlation over the same gene positions)."""
from __future__ import annotations

import dash_bootstrap_components as dbc
import numpy as np
import pandas as pd
from dash import Input, Output, State, ctx, dash_table, html, no_update

from analysis.scoring.sae_features import N_FEATURE_GENES

from .. import ids
from ..components import figure_card, table_column, table_records
from ..figures import feature_cells, feature_genes

ENRICHMENT_COLUMNS = ("gene_set", "overlap", "feature_genes", "set_genes", "universe", "fold", "p", "q")
STATE_COLUMNS = ENRICHMENT_COLUMNS
KNOCKDOWN_COLUMNS = ("tf", "preference", "p", "q", "passes")
TOP_CELLS = 0.1


def section() -> list:
    """The card: a title and a hint until a feature is picked, then its figures and tables (hidden before, so no
    empty axes or header-only tables stand in for it)."""
    return [
        html.H5(id=ids.FEATURES_CARD_TITLE, className="mt-3"),
        html.P("Click a feature on the map, in the table, on the co-activation graph or in the gene search to open "
               "its card here.", id=ids.FEATURES_CARD_HINT, className="explain"),
        html.Div(id=ids.FEATURES_CARD_BODY, hidden=True, children=card_body()),
    ]


def card_body() -> list:
    return [
        dbc.Row([dbc.Col(figure_card("features-card"), lg=5), dbc.Col(figure_card("features-card-cells"), lg=7)]),
        html.H6(f"Reference regulons and interaction neighbourhoods (STRING; co-regulation pairs in the simulation) "
                f"among the feature's top {N_FEATURE_GENES} genes (BH over every feature x set of the layer)",
                className="mt-2"),
        dash_table.DataTable(id=ids.FEATURES_ENRICHMENT, page_size=8, sort_action="native",
                             columns=[table_column(c, ("fold", "p", "q")) for c in ENRICHMENT_COLUMNS],
                             style_table={"overflowX": "auto"}),
        html.H6(f"Cell states among the {TOP_CELLS:.0%} of captured cells where the feature is most active "
                "(feature_genes: those cells; set_genes: the state's cells; BH over the states)", className="mt-2"),
        dash_table.DataTable(id=ids.FEATURES_STATES, page_size=8, sort_action="native",
                             columns=[table_column(c, ("fold", "p", "q")) for c in STATE_COLUMNS],
                             style_table={"overflowX": "auto"}),
        html.H6("Knock-downs it responds to (among each perturbed TF's most responding features; the TF's test "
                "of target preference)", className="mt-2"),
        dash_table.DataTable(id=ids.FEATURES_KNOCKDOWNS, page_size=8, sort_action="native",
                             columns=[table_column(c, ("preference", "p", "q")) for c in KNOCKDOWN_COLUMNS],
                             style_table={"overflowX": "auto"}),
        html.H6("Neighbours in the other layers (Pearson r of activations over the same gene positions)",
                className="mt-2"),
        dash_table.DataTable(id=ids.FEATURES_NEIGHBOURS, page_size=12, sort_action="native",
                             columns=[table_column(c, ("r",)) for c in ("layer", "feature", "r")],
                             style_table={"overflowX": "auto"}),
    ]


def picked_feature(trigger, click_map, click_modules, table_cell, gene_cell) -> int | None:
    """The feature the triggering input names: a map or graph point's customdata, a table row's id."""
    if trigger in (ids.FEATURES_TABLE, ids.FEATURES_GENE_TABLE):
        cell = table_cell if trigger == ids.FEATURES_TABLE else gene_cell
        return cell.get("row_id") if cell else None
    click = click_map if trigger == ids.graph("features-map") else click_modules
    return click["points"][0].get("customdata") if click and click.get("points") else None


def knockdowns(regulatory: pd.DataFrame, layer: int, feature: int) -> pd.DataFrame:
    """The TFs of one layer's regulatory test whose responding features include ``feature``."""
    rows = regulatory[regulatory["layer"] == layer]
    hit = rows["responding"].map(lambda text: str(feature) in text.split(",") if text else False)
    return rows[hit][list(KNOCKDOWN_COLUMNS)]


def register(app, store, settings, jobs, exports):
    @app.callback(Output(ids.FEATURES_CARD_TITLE, "children"), Output(ids.graph("features-card"), "figure"),
                  Output(ids.figdata("features-card"), "data"), Output(ids.graph("features-card-cells"), "figure"),
                  Output(ids.figdata("features-card-cells"), "data"), Output(ids.FEATURES_ENRICHMENT, "data"),
                  Output(ids.FEATURES_STATES, "data"), Output(ids.FEATURES_KNOCKDOWNS, "data"),
                  Output(ids.FEATURES_NEIGHBOURS, "data"), Output(ids.FEATURES_SELECTED, "data"),
                  Output(ids.FEATURES_CARD_BODY, "hidden"), Output(ids.FEATURES_CARD_HINT, "hidden"),
                  Input(ids.graph("features-map"), "clickData"), Input(ids.graph("features-modules"), "clickData"),
                  Input(ids.FEATURES_TABLE, "active_cell"), Input(ids.FEATURES_GENE_TABLE, "active_cell"),
                  Input(ids.FEATURES_LAYER, "value"), State(ids.RUN_SELECT, "value"), State(ids.FEATURES_LINK, "data"),
                  State(ids.FEATURES_SELECTED, "data"), prevent_initial_call=True)
    def card(click_map, click_modules, table_cell, gene_cell, layer, run_id, link, selected):
        """A picked feature's card; a link's feature (``?layer=&feature=``) once its layer is on screen."""
        if ctx.triggered_id == ids.FEATURES_LAYER:
            opens_link = link is not None and selected is None and link["layer"] == layer
            feature = link["feature"] if opens_link else None
        else:
            feature = picked_feature(ctx.triggered_id, click_map, click_modules, table_cell, gene_cell)
        if feature is None or run_id is None or layer is None:
            return (no_update,) * 12
        feature = int(feature)
        features = store.table(run_id, "sae_features").query("layer == @layer and feature == @feature")
        if features.empty:
            return (f"L{layer} has no feature {feature}.",) + (no_update,) * 11
        means, symbols = store.sae_gene_means(run_id, layer)
        order = np.argsort(-means[feature], kind="stable")[:N_FEATURE_GENES]
        order = order[means[feature][order] > 0]
        genes = pd.DataFrame({"symbol": symbols[order], "mean_activation": means[feature][order]})
        row = features.iloc[0]
        module = f", co-activation module {int(row['module'])}" if row["module"] >= 0 else ""
        title = (f"L{layer} feature {feature}: fires on {row['firing_rate']:.2%} of gene positions"
                 + (" (dead)" if row["dead"] else "") + (" (dense)" if row["dense"] else "") + module)
        enriched = store.sae_enrichment(run_id, layer, N_FEATURE_GENES)
        enriched = enriched[enriched["feature"] == feature][list(ENRICHMENT_COLUMNS)]
        states = store.sae_state_enrichment(run_id, layer, feature, TOP_CELLS)[list(STATE_COLUMNS)]
        kd = (knockdowns(store.table(run_id, "sae_regulatory"), layer, feature)
              if store.has_table(run_id, "sae_regulatory") else pd.DataFrame(columns=list(KNOCKDOWN_COLUMNS)))
        positions = store.sae_feature_positions(run_id, layer, feature)
        cells = feature_cells(positions, list(genes["symbol"]), layer=layer, feature=feature)
        return (title, *exports.drawn("features-card", feature_genes(genes, layer=layer, feature=feature), genes),
                *exports.drawn("features-card-cells", cells, positions[positions["symbol"].isin(genes["symbol"])]),
                table_records(enriched), table_records(states), table_records(kd),
                table_records(store.sae_neighbours(run_id, layer, feature)), {"layer": layer, "feature": feature},
                False, True)
