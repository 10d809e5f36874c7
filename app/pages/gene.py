"""Gene: everything the run on screen says about one gene, as cellxgene users expect from a gene search: whether it is
in the panel and the evaluation universe, its reference partners, the heads whose strongest edges involve it (and,
for a TF, the heads that rank its own targets best), the cell-state strata where its read-out-layer edges peak, and
its perturbation-first results when it was perturbed. Reached from the search box in the navigation bar
(``/gene?symbol=GATA1``)."""
from __future__ import annotations

import dash_bootstrap_components as dbc
import numpy as np
import pandas as pd
from dash import Input, Output, State, dcc, html, no_update

from analysis.scoring.cssi_levels import stratum_edges

from .. import ids
from ..components import data_table
from ..shell import run_link

PATH, NAME = "/gene", "Gene"
N_HEADS = 12


def layout(symbol: str | None = None, **_):
    return dbc.Container([
        html.H3(["Gene ", html.Span(symbol or "", id=ids.GENE_TITLE)]),
        dcc.Store(id=ids.GENE_SYMBOL, data=symbol),
        html.Div(id=ids.GENE_BODY),
    ], fluid=True)


def head_rows(sources: pd.DataFrame, rows: np.ndarray, cols: np.ndarray, symbols: np.ndarray, g: int
              ) -> pd.DataFrame:
    """Per attention source: the gene's strongest edge as query (row) and as key (column), with the partner."""
    out = []
    for s, src in enumerate(sources.itertuples(index=False)):
        for role, vec in (("query", rows[s]), ("key", cols[s])):
            v = np.where(np.arange(vec.size) == g, np.nan, vec)
            if np.isfinite(v).any():
                k = int(np.nanargmax(v))
                out.append({"layer": src.layer, "head": "mean" if src.head < 0 else src.head, "role": role,
                            "partner": symbols[k], "attention": float(v[k]),
                            "vs_typical": float(v[k] / np.nanmean(v)) if np.nanmean(v) > 0 else np.nan})
    frame = pd.DataFrame(out)
    return frame.sort_values("vs_typical", ascending=False).head(N_HEADS) if len(frame) else frame


def register(app, store, settings, jobs, exports):
    @app.callback(Output(ids.GENE_SEARCH, "options"), Input(ids.RUN_SELECT, "value"))
    def options(run_id):
        return sorted(store.panel(run_id)["symbol"]) if run_id else []

    @app.callback(Output(ids.URL, "href"), Input(ids.GENE_SEARCH, "value"), State(ids.RUN_SELECT, "value"),
                  prevent_initial_call=True)
    def go(symbol, run_id):
        return run_link(PATH, run_id, symbol=symbol) if symbol else no_update

    @app.callback(Output(ids.GENE_BODY, "children"), Input(ids.RUN_SELECT, "value"), Input(ids.GENE_SYMBOL, "data"))
    def show(run_id, symbol):
        if not run_id or not symbol:
            return dbc.Alert("Type a gene into the search box in the navigation bar.", color="secondary")
        panel = store.panel(run_id)
        symbols = panel["symbol"].to_numpy()
        if symbol not in set(symbols):
            return dbc.Alert(f"{symbol} is not in this run's {len(panel)}-gene panel (attention is kept for panel "
                             "genes only).", color="warning")
        g = int(np.nonzero(symbols == symbol)[0][0])
        info = panel.iloc[g]
        flags = [name for name, col in (("HVG", "is_hvg"), ("reference TF", "is_tf"), ("perturbed", "is_perturbed"),
                                        ("in the evaluation universe", "in_universe")) if bool(info[col])]
        ref = store.reference_edges(run_id)
        partners = ref[(ref["tf"] == symbol) | (ref["target"] == symbol)].assign(
            role=lambda f: np.where(f["tf"] == symbol, "regulates", "regulated by"),
            partner=lambda f: np.where(f["tf"] == symbol, f["target"], f["tf"]))
        partners = partners[partners["partner"].isin(set(symbols))]
        body = [html.P(f"Panel gene {g}, expressed in {int(info['n_cells'])} cells; " + (", ".join(flags) or "no flags")
                       + f". {len(partners)} reference partners in the panel."),
                html.H5("Reference partners"),
                data_table(partners[["reference", "role", "partner", "mode"]], page_size=8)]
        sources, rows, cols, kept = store.gene_edges(run_id, symbol)
        heads = head_rows(sources, rows, cols, symbols, g)
        keyed = g in set(store.attention(run_id).column_rows.tolist())
        scope = (" Layer means only: per-head attention is kept for reference TFs, perturbed genes and genes named "
                 "in extraction.source_genes." if not kept else "" if keyed else
                 " Per head as query only: a perturbed gene plays the regulator, so its per-head attention as key is "
                 "not kept (it is for reference TFs and genes named in extraction.source_genes).")
        body += [html.H5("Heads whose strongest edges involve it", className="mt-3"),
                 html.P("Per head and layer mean: the gene's strongest partner as query (row) and as key (column); "
                        "vs_typical = that edge over the gene's mean edge there." + scope, className="explain"),
                 data_table(heads, page_size=N_HEADS)]
        per_tf = store.table(run_id, "per_tf")
        own = per_tf[(per_tf["tf"] == symbol) & (per_tf["edge_type"] == "attention")
                     & (per_tf["direction"] == "tf_to_target")]
        if len(own):
            best = own.sort_values("auroc", ascending=False).head(N_HEADS)
            body += [html.H5("Heads that rank its own targets best (per-TF AUROC)", className="mt-3"),
                     data_table(best[["reference", "layer", "head", "auroc", "n_pos", "n_neg"]])]
        body += strata_section(store, run_id, g, symbols)
        if store.has_table(run_id, "perturbation_auroc"):
            per = store.table(run_id, "perturbation_auroc").query("perturbation == @symbol")
            if len(per):
                per = per[per["head"] < 0].sort_values(["edge_type", "layer"])
                body += [html.H5("As a perturbation (perturbation-first AUROC)", className="mt-3"),
                         data_table(per[["edge_type", "layer", "auroc", "n_pos", "n_neg"]])]
        return body


def strata_section(store, run_id: str, g: int, symbols: np.ndarray) -> list:
    """Per CSSI stratum at the pre-specified level: its cells, the gene's mean expression there and its strongest
    read-out-layer partner within the stratum."""
    if not store.has_table(run_id, "cssi_curve"):
        return []
    m = store.manifest(run_id)
    run = store.cssi(run_id)
    k = m.config.cssi.primary_n_strata
    sites = run.source.sites
    site = sites[(sites["edge_type"] == "attention_layer_mean") & (sites["layer"] == m.readout_layer)]
    if site.empty:
        return []
    assignment = store.cssi_assignment(run_id, k)
    partners = stratum_edges(run, assignment, k, site.iloc[0], np.array([g]))[:, 0]      # [K, G]
    labels = assignment[run.source.fine]
    rows = []
    for s in range(k):
        edge = np.where(np.arange(len(symbols)) == g, np.nan, partners[s])
        best = int(np.nanargmax(edge)) if np.isfinite(edge).any() else None
        rows.append({"stratum": s, "cells": int((labels == s).sum()),
                     "mean_expression": float(run.source.expression[labels == s, g].mean()),
                     "strongest_partner": symbols[best] if best is not None else "-",
                     "attention": float(edge[best]) if best is not None else np.nan})
    return [html.H5(f"Cell-state strata ({k}, L{m.readout_layer} head mean)", className="mt-3"),
            data_table(pd.DataFrame(rows))]
