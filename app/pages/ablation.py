"""Ablation: precomputed dose-response and intervention fidelity; live ablation of the heads the user picks
(background job with progress and cancel, cached by run, intervention, cells and seed)."""
from __future__ import annotations

import dash_bootstrap_components as dbc
import numpy as np
import pandas as pd
from dash import Input, Output, State, dash_table, dcc, html, no_update

from analysis.interp.interventions import READOUTS, InterventionSpec, intervention_key
from analysis.io.schemas import ABLATION_RESULTS
from analysis.scoring.numbers import effect, probability

from .. import ids
from ..components import (background_job, figure_card, live_cells_refusal, status_admission, table_column,
                          table_records)
from ..jobs import admitted_by
from ..figures import ABLATION_STYLE, DECISIVE_FAMILIES, LAYER_FAMILIES, dose_response, fidelity_heatmap
from ..table_filter import FilterError, filter_rows
from ..verdict_view import bottom_line_slot, register_bottom_line

PATH, NAME = "/ablation", "Ablation"
LIVE_INDEX = "live-ablation-index"
LIVE_KINDS = ("zero_head", "mean_head", "uniform_head")
NUMERIC = ("value", "baseline", "delta", "ci_low", "ci_high", "p", "q")


def live_results(jobs, run_id: str) -> pd.DataFrame:
    """Every live ablation of this run so far (tidy results rows)."""
    return pd.DataFrame(jobs.get((LIVE_INDEX, run_id), []))


def layout(**_):
    return dbc.Container([
        html.H3("Causal ablation"),
        bottom_line_slot("ablation"),
        html.Div(id=ids.ABL_NOTE, className="explain mb-2"),
        dbc.Row([dbc.Col([dbc.Label("Read-out"), dcc.Dropdown(id=ids.ABL_READOUT, value="mlm_loss", clearable=False,
                                                                options=[{"label": r.replace("_", " "), "value": r}
                                                                         for r in READOUTS])], md=4),
                 dbc.Col([dbc.Label("Head sets shown (top-k against random-k and bottom-k decides whether the "
                                    "ranking matters; the controls are on demand)"),
                          dbc.Checklist(id=ids.ABL_FAMILIES, value=list(DECISIVE_FAMILIES), inline=True,
                                        options=[{"label": ABLATION_STYLE[f][0], "value": f} for f in ABLATION_STYLE])],
                         md=8)]),
        figure_card("abl-dose"),
        figure_card("abl-fidelity", "Rows: the head sets shown above, then whole layers and MLPs. A row of zeros "
                    "after the intervened layer would mean the intervention did nothing (the paper's fidelity check, "
                    "SN14)."),
        html.H5("Live ablation", className="mt-3"),
        dbc.Row([
            dbc.Col([dbc.Label("Heads (the head selected on the Heads page is added)"),
                     dcc.Dropdown(id=ids.ABL_HEADS, multi=True)], md=4),
            dbc.Col([dbc.Label("Intervention"), dbc.RadioItems(id=ids.ABL_KIND, value="zero_head", options=[
                {"label": "zero", "value": "zero_head"}, {"label": "dataset mean", "value": "mean_head"},
                {"label": "uniform attention", "value": "uniform_head"}])], md=2),
            dbc.Col([dbc.Label("cells"), dbc.Input(id=ids.ABL_CELLS, type="number", value=50, min=2, step=1)], md=1),
            dbc.Col([dbc.Button("Run", id=ids.ABL_RUN, color="primary", className="me-2 mt-4"),
                     dbc.Button("Cancel", id=ids.ABL_CANCEL, color="secondary", className="mt-4", disabled=True)],
                    md=2),
            dbc.Col(dbc.Progress(id=ids.ABL_PROGRESS, value=0, className="mt-4", style={"height": "22px"}), md=3),
        ]),
        html.Div(id=ids.ABL_STATUS, className="explain my-2"),
        dcc.Store(id=ids.ABL_LIVE_VERSION, data=0),
        html.H5("Results"),
        html.P("Your live ablations come first; structural rows (at or after the read-out layer, so they cannot "
               "change an attention read-out) are crossed out and carry no test.", className="explain"),
        html.Div(id=ids.ABL_FILTER_STATUS, className="text-danger small"),
        dash_table.DataTable(id=ids.ABL_TABLE, page_size=12, sort_action="native", filter_action="custom",
                             columns=[table_column(c, NUMERIC) for c in ABLATION_RESULTS[0]],
                             style_table={"overflowX": "auto"},
                             style_data_conditional=[{"if": {"filter_query": "{structural} = yes"},
                                                      "textDecoration": "line-through", "color": "#6c757d"},
                                                     {"if": {"filter_query": '{family} = "custom"'},
                                                      "fontWeight": "bold"}]),
    ], fluid=True)


def register(app, store, settings, jobs, exports):
    register_bottom_line(app, store, "ablation", ("head_ranking",))

    @app.callback(Output(ids.ABL_HEADS, "options"), Output(ids.ABL_HEADS, "value"), Output(ids.ABL_NOTE, "children"),
                  Output(ids.ABL_READOUT, "options"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.SELECTED_HEAD, "data"), State(ids.ABL_HEADS, "value"))
    def heads(run_id, selected, current):
        if not run_id:
            return [], [], "", no_update
        m = store.manifest(run_id)
        opts = [f"L{l}H{h}" for l in range(m.model.n_layers) for h in range(m.model.n_heads)]
        value = list(current or [])
        if selected and f"L{selected['layer']}H{selected['head']}" not in value:
            value.append(f"L{selected['layer']}H{selected['head']}")
        note = (f"{m.family} model. Heads ranked by AUROC against {m.reference_names[0]} (TF -> target). Attention "
                f"read-outs use layer L{m.readout_layer}, fixed in the run's config before results were seen "
                f"(perturbation.readout_layer); interventions at or after L{m.readout_layer} cannot change them "
                f"(the read-out recomputes attention from what enters that layer), so their attention read-outs are "
                f"marked structural (crossed out, column 'structural'), not tested and not in the registry. "
                f"Behaviour on one fixed seeded masking: mlm loss = "
                f"{m.readout_label('mlm_loss')}, mlm accuracy = {m.readout_label('mlm_accuracy')}; output cosine "
                f"distance = {m.readout_label('output_cosine_distance')}.")
        readouts = [{"label": f"{r.replace('_', ' ')}: {m.readout_label(r)}" if r in m.model.readout_labels
                     else r.replace("_", " "), "value": r} for r in READOUTS]
        return opts, value, note, readouts

    @app.callback(Output(ids.graph("abl-dose"), "figure"), Output(ids.figdata("abl-dose"), "data"),
                  Output(ids.graph("abl-fidelity"), "figure"), Output(ids.figdata("abl-fidelity"), "data"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.ABL_READOUT, "value"), Input(ids.ABL_FAMILIES, "value"),
                  Input(ids.ABL_LIVE_VERSION, "data"))
    def precomputed(run_id, readout, families, _version):
        if not run_id or not store.has_table(run_id, "ablation_results"):
            return {}, [], {}, []
        res = all_results(run_id)
        sel = res[res["readout"] == readout]
        shown = tuple(f for f in ABLATION_STYLE if f in (families or []))
        fid = store.table(run_id, "ablation_fidelity")
        fid = fid[fid["family"].isin(shown + LAYER_FAMILIES)]                 # the fidelity of what is shown
        figure = dose_response(sel, readout=readout, families=shown)
        return (*exports.drawn("abl-dose", figure, sel), *exports.drawn("abl-fidelity", fidelity_heatmap(fid), fid))

    @app.callback(Output(ids.ABL_TABLE, "data"), Output(ids.ABL_FILTER_STATUS, "children"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.ABL_LIVE_VERSION, "data"),
                  Input(ids.ABL_TABLE, "filter_query"))
    def results_table(run_id, _version, query):
        if not run_id or not store.has_table(run_id, "ablation_results"):
            return [], ""
        res = all_results(run_id)
        shown = res.assign(structural=np.where(res["structural"].fillna(False).astype(bool), "yes", ""))
        try:
            return table_records(filter_rows(shown, query)), ""
        except FilterError as exc:
            return table_records(shown), f"Filter not applied: {exc}."

    def all_results(run_id: str) -> pd.DataFrame:
        """The run's precomputed sweep with this session's live ablations first, newest first."""
        return pd.concat([live_results(jobs, run_id).iloc[::-1], store.table(run_id, "ablation_results")],
                         ignore_index=True)

    def live_request(run_id, heads, kind, n_cells):
        """(specs, cache key) of a valid request, or (None, the status that refuses it)."""
        if not run_id or not heads:
            return None, "Pick at least one head."
        m = store.manifest(run_id)
        refusal = live_cells_refusal(settings, m, n_cells)
        if refusal:
            return None, refusal
        if kind not in LIVE_KINDS:
            return None, f"Refused: the intervention must be one of {', '.join(LIVE_KINDS)}."
        try:
            pairs = sorted({(int(h[1:].split("H")[0]), int(h.split("H")[1])) for h in heads})
        except (TypeError, ValueError, IndexError):
            return None, "Refused: heads are named like L2H3."
        if not all(0 <= l < m.model.n_layers and 0 <= h < m.model.n_heads for l, h in pairs):
            return None, f"Refused: this model has layers 0-{m.model.n_layers - 1} and heads 0-{m.model.n_heads - 1}."
        by_layer: dict[int, list[int]] = {}
        for layer, head in pairs:
            by_layer.setdefault(layer, []).append(head)
        specs = [InterventionSpec(kind, layer, tuple(hs)) for layer, hs in sorted(by_layer.items())]
        return specs, ("live-ablation", run_id, intervention_key(specs), int(n_cells), m.config.ablation.seed)

    @app.callback(Output(ids.ABL_STATUS, "children"), Output(ids.ABL_LIVE_VERSION, "data"),
                  Input(ids.ABL_RUN, "n_clicks"),
                  State(ids.RUN_SELECT, "value"), State(ids.ABL_HEADS, "value"), State(ids.ABL_KIND, "value"),
                  State(ids.ABL_CELLS, "value"), State(ids.ABL_LIVE_VERSION, "data"),
                  **background_job(ids.ABL_RUN, ids.ABL_CANCEL, ids.ABL_PROGRESS))
    @admitted_by(status_admission(live_request, jobs), busy=lambda message: (message, no_update))
    def live(set_progress, _n, run_id, heads, kind, n_cells, version):
        specs, key = live_request(run_id, heads, kind, n_cells)
        m = store.manifest(run_id)
        from analysis.rerun import RunContext, live_ablation  # torch: only in the worker

        de = store.table(run_id, "de_results") if store.has_table(run_id, "de_results") else None
        context = RunContext.from_manifest(m, store.panel(run_id))
        results, _fid = live_ablation(context, store.reference_edges(run_id), store.pair_counts(run_id), de, specs,
                                      n_cells=int(n_cells), progress=lambda f, msg: set_progress((int(100 * f), msg)),
                                      baseline_dir=settings.cache_dir / "live" / run_id,
                                      baseline_gib=settings.live_baseline_gib)
        results = results.assign(n_cells=int(n_cells))
        index = jobs.get((LIVE_INDEX, run_id), [])
        jobs.set((LIVE_INDEX, run_id), index + results.to_dict("records"))
        loss = results[results["readout"] == "mlm_loss"].iloc[0]
        status = (f"{intervention_key(specs)} on {n_cells} cells: {m.readout_label('mlm_loss')} "
                  f"{effect(loss['baseline'], digits=6)} -> {effect(loss['value'], digits=6)} (delta "
                  f"{effect(loss['delta'], signed=True)}, Wilcoxon p {probability(loss['p'])}); added to the "
                  "dose-response (black star), first in the results table, and to the statistics registry as "
                  "exploratory.")
        jobs.set(key, status)
        set_progress((100, "done"))
        return status, (version or 0) + 1
