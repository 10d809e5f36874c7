"""The Features page's live feature intervention: the features the user picks (the open card's is added)
multiplied by one or more scales at their layer through the layer's SAE, error term kept
(:func:`analysis.rerun.live_feature_edit`), in the background with progress and cancel, on the head ablations' cells
and masking; results join a dose-response over the scale, every gene's prediction change (the features' own genes,
their card's top genes, against the rest: causal specificity) and the statistics registry as exploratory tests.
Cached by run, layer, features, scales, cells and seed."""
from __future__ import annotations

import math

import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, State, dash_table, dcc, html, no_update

from analysis.interp.interventions import FeatureEdit
from analysis.io import files
from analysis.io.schemas import FEATURE_EDIT_RESULTS
from analysis.scoring.numbers import probability
from analysis.scoring.sae_features import top_genes

from .. import ids
from ..components import (background_job, figure_card, live_cells_refusal, status_admission, table_column,
                          table_records)
from ..figures import feature_dose_response, feature_specificity
from ..jobs import admitted_by

EDIT_INDEX = "feature-edit-index"
EDIT_GENES = "feature-edit-genes"
EDIT_LATEST = "feature-edit-latest"   # the latest request's strongest edit (scale farthest from 1) and its cells
MAX_SCALES = 8
READOUTS = ("mlm_loss", "mlm_accuracy", "output_cosine_distance", "specificity_genes", "specificity_positions")


def live_edit_results(jobs, run_id: str) -> pd.DataFrame:
    """Every live feature edit of this run so far (schema ``feature_edit_results`` plus ``n_cells``)."""
    return pd.DataFrame(jobs.get((EDIT_INDEX, run_id), []))


def parse_scales(text) -> list[float] | None:
    """The scales typed as ``0, 0.5, 2`` (at most :data:`MAX_SCALES`, finite, duplicates dropped), or None."""
    try:
        scales = sorted({float(part) for part in str(text).replace(";", ",").split(",") if part.strip()})
    except ValueError:
        return None
    return scales if 0 < len(scales) <= MAX_SCALES and all(math.isfinite(s) for s in scales) else None


def section(n_own: int) -> list:
    return [
        html.H5("Live feature intervention", className="mt-4"),
        html.Div(f"Multiply the chosen features' activations by each scale at their layer, through the SAE with its "
                 f"error term kept (scale 1 leaves the model exactly as it is; 0 ablates). Read-outs against the "
                 f"unedited model on the head ablations' cells and masking; causal specificity compares the "
                 f"prediction change of the features' own genes (their {n_own} top genes) with the rest.",
                 className="explain mb-2"),
        dbc.Row([
            dbc.Col([dbc.Label("Features of this layer (the open card's is added)"),
                     dcc.Dropdown(id=ids.FEATURES_EDIT_FEATURES, multi=True)], md=4),
            dbc.Col([dbc.Label("Scales (comma-separated)"),
                     dbc.Input(id=ids.FEATURES_EDIT_SCALES, value="0, 0.5, 2", type="text")], md=2),
            dbc.Col([dbc.Label("cells"), dbc.Input(id=ids.FEATURES_EDIT_CELLS, type="number", value=40, min=2,
                                                   step=1)], md=1),
            dbc.Col([dbc.Button("Run", id=ids.FEATURES_EDIT_RUN, color="primary", className="me-2 mt-4"),
                     dbc.Button("Cancel", id=ids.FEATURES_EDIT_CANCEL, color="secondary", className="mt-4",
                                disabled=True)], md=2),
            dbc.Col(dbc.Progress(id=ids.FEATURES_EDIT_PROGRESS, value=0, className="mt-4", style={"height": "22px"}),
                    md=3),
        ]),
        html.Div(id=ids.FEATURES_EDIT_STATUS, className="explain my-2"),
        dcc.Store(id=ids.FEATURES_EDIT_VERSION, data=0),
        dbc.Row([dbc.Col([dbc.Label("Read-out"), dcc.Dropdown(
            id=ids.FEATURES_EDIT_READOUT, value="mlm_loss", clearable=False,
            options=[{"label": r.replace("_", " "), "value": r} for r in READOUTS])], md=4)]),
        dbc.Row([dbc.Col(figure_card("features-dose", placeholder="Run a feature intervention"), lg=6),
                 dbc.Col(figure_card("features-specificity", placeholder="Every gene's prediction change of the "
                                                                         "edit picked on the dose-response"), lg=6)]),
        dash_table.DataTable(id=ids.FEATURES_EDIT_TABLE, page_size=10, sort_action="native", filter_action="native",
                             columns=[table_column(c, ("scale", "value", "baseline", "delta", "ci_low", "ci_high", "p",
                                                       "q")) for c in FEATURE_EDIT_RESULTS[0] + ("n_cells",)],
                             style_table={"overflowX": "auto"}),
    ]


def register(app, store, settings, jobs, exports, *, n_own: int):
    @app.callback(Output(ids.FEATURES_EDIT_FEATURES, "options"), Output(ids.FEATURES_EDIT_FEATURES, "value"),
                  Input(ids.FEATURES_LAYER, "value"), Input(ids.FEATURES_SELECTED, "data"),
                  State(ids.RUN_SELECT, "value"), State(ids.FEATURES_EDIT_FEATURES, "value"))
    def features(layer, selected, run_id, current):
        if not run_id or layer is None or not store.has_table(run_id, "sae_features"):
            return [], []
        feats = store.table(run_id, "sae_features").query("layer == @layer and not dead")
        options = [{"label": f"{int(f)}: {genes}", "value": int(f)} for f, genes in zip(feats["feature"],
                                                                                      feats["top_genes"])]
        valid = set(feats["feature"].astype(int))
        value = [f for f in (current or []) if f in valid]
        if selected and selected.get("layer") == layer and selected["feature"] not in value:
            value.append(selected["feature"])
        return options, value

    def request(run_id, layer, chosen, scales_text, n_cells):
        """(edits, cache key) of a valid request, or (None, the status that refuses it)."""
        if not run_id or layer is None or not chosen:
            return None, "Pick at least one feature (click one on the map or in the table, or choose it here)."
        m = store.manifest(run_id)
        sizes = store.table(run_id, "sae_layers").set_index("layer")["n_features"]
        if layer not in sizes.index:
            return None, f"Refused: this run has no SAE of layer {layer}."
        try:
            chosen = sorted({int(f) for f in chosen})
        except (TypeError, ValueError):
            return None, "Refused: features are numbered 0, 1, 2, ..."
        if not all(0 <= f < int(sizes[layer]) for f in chosen):
            return None, f"Refused: the SAE of L{layer} has features 0-{int(sizes[layer]) - 1}."
        scales = parse_scales(scales_text)
        if scales is None:
            return None, (f"Refused: scales are 1 to {MAX_SCALES} finite numbers separated by commas, "
                          f"e.g. 0, 0.5, 2.")
        refusal = live_cells_refusal(settings, m, n_cells)
        if refusal:
            return None, refusal
        edits = [FeatureEdit(int(layer), tuple(chosen), s) for s in scales]
        return edits, ("feature-edit", run_id, tuple(e.key for e in edits), int(n_cells), m.config.ablation.seed)

    @app.callback(Output(ids.FEATURES_EDIT_STATUS, "children"), Output(ids.FEATURES_EDIT_VERSION, "data"),
                  Input(ids.FEATURES_EDIT_RUN, "n_clicks"),
                  State(ids.RUN_SELECT, "value"), State(ids.FEATURES_LAYER, "value"),
                  State(ids.FEATURES_EDIT_FEATURES, "value"), State(ids.FEATURES_EDIT_SCALES, "value"),
                  State(ids.FEATURES_EDIT_CELLS, "value"), State(ids.FEATURES_EDIT_VERSION, "data"),
                  **background_job(ids.FEATURES_EDIT_RUN, ids.FEATURES_EDIT_CANCEL, ids.FEATURES_EDIT_PROGRESS))
    @admitted_by(status_admission(request, jobs), busy=lambda message: (message, no_update))
    def live(set_progress, _n, run_id, layer, chosen, scales_text, n_cells, version):
        edits, key = request(run_id, layer, chosen, scales_text, n_cells)
        from analysis.rerun import RunContext, live_feature_edit  # torch: only in the worker

        means, _symbols = store.sae_gene_means(run_id, layer)
        own = top_genes(means, n_own)[list(edits[0].features)].any(axis=0)
        context = RunContext.from_manifest(store.manifest(run_id), store.panel(run_id))
        results, genes = live_feature_edit(context, store.run_dir(run_id) / files.sae_weights(layer), edits, own,
                                           n_cells=int(n_cells),
                                           progress=lambda f, msg: set_progress((int(100 * f), msg)))
        results = results.assign(n_cells=int(n_cells))
        for edit in edits:
            jobs.set((EDIT_GENES, run_id, edit.key, int(n_cells)),
                     genes[genes["intervention"] == edit.key].to_dict("records"))
        earlier = [r for r in jobs.get((EDIT_INDEX, run_id), [])
                   if (r["intervention"], r["n_cells"]) not in {(e.key, int(n_cells)) for e in edits}]
        jobs.set((EDIT_INDEX, run_id), earlier + results.to_dict("records"))
        strongest = max(edits, key=lambda e: abs(e.scale - 1))
        jobs.set((EDIT_LATEST, run_id), [strongest.key, int(n_cells)])
        loss = results[results["readout"] == "mlm_loss"].set_index("scale")
        spec = results[results["readout"] == "specificity_genes"].set_index("scale")
        m = store.manifest(run_id)
        status = (f"L{layer} features {edits[0].features} on {n_cells} cells, {m.readout_label('mlm_loss')}: "
                  + "; ".join(f"x{s:g} {loss.loc[s, 'baseline']:.4f} -> {loss.loc[s, 'value']:.4f} (p "
                              f"{probability(loss.loc[s, 'p'])}, own/other genes {spec.loc[s, 'value']:.3g}/"
                              f"{spec.loc[s, 'baseline']:.3g})" for s in loss.index)
                  + ". Added to the dose-response and to the statistics registry as exploratory.")
        jobs.set(key, status)
        set_progress((100, "done"))
        return status, (version or 0) + 1

    @app.callback(Output(ids.graph("features-dose"), "figure"), Output(ids.figdata("features-dose"), "data"),
                  Output(ids.FEATURES_EDIT_TABLE, "data"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.FEATURES_EDIT_READOUT, "value"),
                  Input(ids.FEATURES_EDIT_VERSION, "data"))
    def dose(run_id, readout, _version):
        results = live_edit_results(jobs, run_id) if run_id else pd.DataFrame()
        if results.empty:
            return no_update, None, []
        sel = results[results["readout"] == readout]
        return (*exports.drawn("features-dose", feature_dose_response(sel, readout=readout), sel),
                table_records(results))

    @app.callback(Output(ids.graph("features-specificity"), "figure"),
                  Output(ids.figdata("features-specificity"), "data"),
                  Input(ids.graph("features-dose"), "clickData"), Input(ids.FEATURES_EDIT_VERSION, "data"),
                  State(ids.RUN_SELECT, "value"))
    def specificity(click, _version, run_id):
        results = live_edit_results(jobs, run_id) if run_id else pd.DataFrame()
        if results.empty:
            return no_update, None
        if click and click.get("points") and click["points"][0].get("customdata"):
            key, _p, n_cells = click["points"][0]["customdata"]
        else:
            key, n_cells = jobs.get((EDIT_LATEST, run_id))
        genes = pd.DataFrame(jobs.get((EDIT_GENES, run_id, key, n_cells), []))
        if genes.empty:
            return no_update, None
        return exports.drawn("features-specificity", feature_specificity(genes, intervention=key), genes)
