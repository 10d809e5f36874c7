"""Heads: layer x head heatmap of any ranking metric, how stable the lead of the best head and layer is (rank reversal
under a TF bootstrap); click a head for its gene x gene attention and top edges. The head shown is in the URL
(``?head=L1H2``), so a link opens it."""
from __future__ import annotations

import re

import dash_bootstrap_components as dbc
from dash import ClientsideFunction, Input, Output, dash_table, dcc, html, no_update

from analysis.scoring.rank_reversal import describe

from .. import ids
from ..components import figure_card, table_column, table_records
from ..data import head_view, reference_tf_rows
from ..figures import DIRECTION_LABELS, gene_gene_heatmap, head_grid, head_heatmap, metric_label
from ..network_export import network_bar, register_network_export
from ..verdict_view import bottom_line_slot, register_bottom_line

PATH, NAME = "/heads", "Heads"
EDGE_COLUMNS = ("tf", "target", "score", "n_cells", "in_reference", "mode")   # app.data.head_view's edges


def linked_head(head) -> dict | None:
    """The ``{layer, head}`` of a link's ``?head=L1H2``, or None (a link is text from anywhere: only that pattern is
    read, nothing of it is evaluated)."""
    match = re.fullmatch(r"L(\d{1,4})H(\d{1,4})", head) if isinstance(head, str) else None
    return {"layer": int(match[1]), "head": int(match[2])} if match else None


def layout(head=None, **_):
    controls = dbc.Row([
        dbc.Col([dbc.Label("Reference"), dcc.Dropdown(id=ids.HEADS_REFERENCE, clearable=False)], md=3),
        dbc.Col([dbc.Label("Metric"), dcc.Dropdown(id=ids.HEADS_METRIC, clearable=False)], md=3),
        dbc.Col([dbc.Label("Direction"), dbc.RadioItems(
            id=ids.HEADS_DIRECTION, value="tf_to_target", inline=True,
            options=[{"label": k, "value": k} for k in DIRECTION_LABELS])], md=6),
    ], className="mb-2")
    return dbc.Container([
        dcc.Store(id=ids.HEADS_LINK, data=linked_head(head)), dcc.Store(id=ids.HEADS_SHOWN),
        html.Div(id=ids.HEADS_URL_HEAD, hidden=True),
        html.H3("Attention heads"),
        bottom_line_slot("heads"),
        html.P("Each cell is one attention head scored against the reference over the evaluable universe "
               "(reference TFs in the gene panel x co-observed panel genes). Click a head to open it.",
               className="explain"),
        html.P(id=ids.HEADS_CONVENTION, className="explain"),
        controls,
        figure_card("heads-heatmap"),
        html.P(id=ids.HEADS_ORDER, className="explain"),
        html.H5(id=ids.HEADS_HEAD_LABEL, className="mt-3"),
        figure_card("heads-gene-gene", "Edge score = attention summed over cells / cells in which both genes are in "
                    "the input. Crosses mark reference edges."),
        network_bar(),
        html.H5("Top edges of the selected head", className="mt-3"),
        dash_table.DataTable(id=ids.HEADS_EDGES, page_size=15, sort_action="native", style_table={"overflowX": "auto"},
                             columns=[table_column(c, ("score",)) for c in EDGE_COLUMNS],
                             style_data_conditional=[{"if": {"filter_query": "{in_reference} eq 'True'"},
                                                      "backgroundColor": "#fff3cd"}]),
    ], fluid=True)


def register(app, store, settings, jobs, exports):
    register_bottom_line(app, store, "heads", ("head_screen",))
    register_network_export(app, store)

    @app.callback(Output(ids.SELECTED_HEAD, "data", allow_duplicate=True), Input(ids.HEADS_LINK, "data"),
                  prevent_initial_call="initial_duplicate")
    def head_from_link(link):
        """A link's head becomes the selected head (shared with the other pages)."""
        return link or no_update

    # the head on screen goes into the URL in place (no history entry), so the page has a link of its own
    app.clientside_callback(ClientsideFunction("explorer", "headInUrl"), Output(ids.HEADS_URL_HEAD, "children"),
                            Input(ids.HEADS_SHOWN, "data"), prevent_initial_call=True)

    @app.callback(Output(ids.HEADS_CONVENTION, "children"), Input(ids.RUN_SELECT, "value"))
    def convention(run_id):
        """How the run's model family reads attention as edges (its tools' direction convention)."""
        return store.manifest(run_id).model.attention_convention if run_id else ""

    @app.callback(Output(ids.HEADS_REFERENCE, "options"), Output(ids.HEADS_REFERENCE, "value"),
                  Output(ids.HEADS_METRIC, "options"), Output(ids.HEADS_METRIC, "value"),
                  Input(ids.RUN_SELECT, "value"))
    def options(run_id):
        if not run_id:
            return [], None, [], None
        r = store.ranking(run_id)
        refs = list(dict.fromkeys(r["reference"]))
        metrics = [m for m in dict.fromkeys(r["metric"])]
        return refs, refs[0], [{"label": metric_label(m), "value": m} for m in metrics], "auroc"

    @app.callback(Output(ids.graph("heads-heatmap"), "figure"), Output(ids.figdata("heads-heatmap"), "data"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.HEADS_REFERENCE, "value"),
                  Input(ids.HEADS_DIRECTION, "value"), Input(ids.HEADS_METRIC, "value"),
                  Input(ids.SELECTED_HEAD, "data"))
    def heatmap(run_id, reference, direction, metric, selected):
        if not (run_id and reference and metric):
            return {}, []
        r = store.ranking(run_id)
        sel = r[(r["reference"] == reference) & (r["direction"] == direction) & (r["metric"] == metric)]
        grid = head_grid(sel)
        base = sel.loc[sel["edge_type"] == "spearman", "value"]
        pick = (selected["layer"], selected["head"]) if selected else None
        fig = head_heatmap(grid, metric=metric, reference=reference, direction=direction,
                           baseline=float(base.iloc[0]) if len(base) else None, selected=pick)
        return fig, exports.publish("heads-heatmap", fig, sel)

    @app.callback(Output(ids.HEADS_ORDER, "children"), Input(ids.RUN_SELECT, "value"),
                  Input(ids.HEADS_REFERENCE, "value"), Input(ids.HEADS_DIRECTION, "value"))
    def ordering(run_id, reference, direction):
        """The best head's and the best layer's lead over the second by AUROC, and how often it flips."""
        if not (run_id and reference) or not store.has_table(run_id, "rank_reversal"):
            return ""
        flips = store.table(run_id, "rank_reversal")
        flips = flips[(flips["reference"] == reference) & (flips["direction"] == direction)]
        return " ".join(f"By AUROC, {row['ordering'].replace(' vs second', '')}: {describe(row)}"
                        for row in flips.to_dict("records"))

    @app.callback(Output(ids.SELECTED_HEAD, "data"), Input(ids.graph("heads-heatmap"), "clickData"),
                  prevent_initial_call=True)
    def select(click):
        if not click or not click.get("points"):
            return no_update
        pt = click["points"][0]
        return {"layer": int(str(pt["y"]).lstrip("L")), "head": int(str(pt["x"]).lstrip("H"))}

    @app.callback(Output(ids.graph("heads-gene-gene"), "figure"), Output(ids.figdata("heads-gene-gene"), "data"),
                  Output(ids.HEADS_EDGES, "data"), Output(ids.HEADS_HEAD_LABEL, "children"),
                  Output(ids.HEADS_SHOWN, "data"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.SELECTED_HEAD, "data"),
                  Input(ids.HEADS_REFERENCE, "value"), Input(ids.HEADS_DIRECTION, "value"))
    def head_detail(run_id, selected, reference, direction):
        if not (run_id and reference):
            return {}, [], [], "", None
        label = None
        if not selected:   # open on the best head rather than an empty frame
            r = store.ranking(run_id)
            best = r[(r["reference"] == reference) & (r["direction"] == direction) & (r["metric"] == "auroc")
                     & (r["edge_type"] == "attention")]
            if best.empty:
                return {}, [], [], "Click a head in the heatmap to open its gene x gene attention.", None
            top = best.loc[best["value"].idxmax()]
            selected = {"layer": int(top["layer"]), "head": int(top["head"])}
            label = (f"Showing the best head by AUROC, layer {selected['layer']}, head {selected['head']}; click "
                     "another in the heatmap.")
        layer, head = selected["layer"], selected["head"]
        panel, ref_edges = store.panel(run_id), store.reference_edges(run_id)
        tf_rows = reference_tf_rows(panel, ref_edges, reference)
        try:
            scores = store.head_scores(run_id, layer, head, tf_rows, direction)
        except KeyError as exc:
            return {}, [], [], exc.args[0], None
        block, edges = head_view(scores, tf_rows, store.pair_counts(run_id), panel, ref_edges, reference=reference,
                                 n_rows=min(25, settings.max_genes_drawn), n_cols=settings.max_genes_drawn,
                                 n_edges=settings.top_edges)
        title = f"Layer {layer}, head {head} ({reference})"
        fig = gene_gene_heatmap(block, title=title, direction=direction)
        table = edges.assign(in_reference=edges["in_reference"].astype(str))
        return (fig, exports.publish("heads-gene-gene", fig, block), table_records(table),
                label or f"Selected: layer {layer}, head {head}", {"layer": layer, "head": head})
