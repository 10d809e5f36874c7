"""Perturbation: per-perturbation AUROC by layer and head vs correlation and gene-level baselines; paired
attention-vs-correlation scatter (the selected head, else the pre-specified read-out layer); sensitivity grid."""
from __future__ import annotations

import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, dcc, html

from .. import ids
from ..components import figure_card
from ..figures import paired_scatter, perturbation_box, sensitivity_heatmap, source_label

PATH, NAME = "/perturbation", "Perturbation"


def layout(**_):
    return dbc.Container([
        html.H3("Perturbation-first evaluation"),
        html.Div(id=ids.PERT_NOTE, className="explain mb-2"),
        figure_card("pert-box"),
        dbc.Row([
            dbc.Col(figure_card("pert-scatter"), md=6),
            dbc.Col([dbc.Label("Grid source"), dcc.Dropdown(id=ids.PERT_GRID_SOURCE, clearable=False),
                     figure_card("pert-grid")], md=6),
        ]),
    ], fluid=True)


def _label_frame(per: pd.DataFrame, readout: int, selected: dict | None) -> pd.DataFrame:
    means = per[per["edge_type"] == "attention_layer_mean"].assign(kind="attention")
    means.loc[means["layer"] == readout, "kind"] = "readout"
    parts = [means]
    if selected:
        parts.append(per[(per["edge_type"] == "attention") & (per["layer"] == selected["layer"])
                         & (per["head"] == selected["head"])].assign(kind="head"))
    parts.append(per[per["edge_type"] == "spearman"].assign(kind="correlation"))
    parts.append(per[per["edge_type"].str.startswith("baseline_")].assign(kind="baseline"))
    frame = pd.concat(parts, ignore_index=True)
    frame["source"] = [source_label(e, l, h) for e, l, h in zip(frame["edge_type"], frame["layer"], frame["head"])]
    return frame[["source", "kind", "perturbation", "auroc", "n_pos", "n_neg", "edge_type", "layer", "head"]]


def register(app, store, settings):
    @app.callback(Output(ids.graph("pert-box"), "figure"), Output(ids.figdata("pert-box"), "data"),
                  Output(ids.graph("pert-scatter"), "figure"), Output(ids.figdata("pert-scatter"), "data"),
                  Output(ids.PERT_NOTE, "children"), Output(ids.PERT_GRID_SOURCE, "options"),
                  Output(ids.PERT_GRID_SOURCE, "value"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.SELECTED_HEAD, "data"))
    def show(run_id, selected):
        if not run_id or not store.has_table(run_id, "perturbation_auroc"):
            return {}, [], {}, [], "This run has no perturbation column, so no perturbation-first evaluation.", [], None
        m = store.manifest(run_id)
        readout = m["config"]["perturbation"]["readout_layer"] % m["model"]["n_layers"]
        per = store.table(run_id, "perturbation_auroc")
        frame = _label_frame(per, readout, selected)
        box = perturbation_box(frame, readout_layer=readout)
        x_src = frame[frame["kind"] == "correlation"].set_index("perturbation")["auroc"]
        y_kind = "head" if selected and (frame["kind"] == "head").any() else "readout"
        y_src = frame[frame["kind"] == y_kind].set_index("perturbation")["auroc"]
        y_label = (f"L{selected['layer']}H{selected['head']}" if y_kind == "head" else f"L{readout} mean")
        pairs = pd.DataFrame({"x": x_src, "y": y_src}).dropna().reset_index()
        scatter = paired_scatter(pairs, x_label="Spearman", y_label=y_label)
        groups = store.table(run_id, "de_groups")
        note = (f"{per['perturbation'].nunique()} evaluable perturbations of {len(groups)} tested "
                f"(evaluable: perturbed gene in the panel and at least one DE and one non-DE target). "
                f"DE: {m['config']['perturbation']['test']} test, |log2FC| >= "
                f"{m['config']['perturbation']['lfc_threshold']}, BH q < {m['config']['perturbation']['alpha']}.")
        grid = store.table(run_id, "sensitivity_grid")
        sources = sorted({source_label(e, l, -1) for e, l in zip(grid["edge_type"], grid["layer"])})
        return (box, frame.to_dict("records"), scatter, pairs.to_dict("records"), note, sources,
                "Spearman" if "Spearman" in sources else sources[0])

    @app.callback(Output(ids.graph("pert-grid"), "figure"), Output(ids.figdata("pert-grid"), "data"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.PERT_GRID_SOURCE, "value"))
    def grid(run_id, source):
        if not run_id or not source or not store.has_table(run_id, "sensitivity_grid"):
            return {}, []
        g = store.table(run_id, "sensitivity_grid")
        g = g[[source_label(e, l, -1) == source for e, l in zip(g["edge_type"], g["layer"])]]
        return sensitivity_heatmap(g, source=source), g.to_dict("records")
