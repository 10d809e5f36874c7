"""Runs side by side (paper sections 2.6-2.7, Supplementary Note 13): reference recovery of every layer's head-mean
attention and of correlation re-scored on the genes all runs share, on a relative-depth axis (layer / (layers - 1),
so a 4-layer and an 18-layer model line up), and each run's headline confound numbers in one row.

Re-scoring on the shared genes matters: two models' panels differ (vocabularies, tokenisation), and an AUROC over
different candidate pairs is not comparable. Each run keeps its own co-observation mask (pairs its attention saw)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata, spearmanr

from ..io.references import ReferenceNetwork
from .edges import EdgeScores, HeadEdges
from .ranking import auroc_from_ranks, evaluable_universe


def shared_symbols(panels: list[pd.DataFrame]) -> list[str]:
    """Gene symbols in every panel, in the first panel's order."""
    common = set.intersection(*(set(p["symbol"]) for p in panels))
    return [s for s in panels[0]["symbol"] if s in common]


def layer_recovery(edges: EdgeScores | HeadEdges, reference: ReferenceNetwork, symbols: list[str], *,
                   direction: str = "tf_to_target") -> pd.DataFrame:
    """AUROC against ``reference`` of each source of ``edges`` restricted to ``symbols`` (rows: edge_type, layer,
    head, relative_depth (NaN for non-attention sources), auroc, n_pos, n_neg); empty when the shared genes hold no
    reference pair."""
    sub = edges.restrict(symbols)
    uni = evaluable_universe(sub.panel, reference, sub.observed)
    if uni.n_pos == 0 or uni.n_pos == int(uni.pair_mask.sum()):
        return pd.DataFrame(columns=["edge_type", "layer", "head", "relative_depth", "auroc", "n_pos", "n_neg"])
    scores = np.nan_to_num(sub.oriented(uni.tf_rows, direction)[:, uni.pair_mask])                      # [S, N]
    auroc = auroc_from_ranks(rankdata(scores, axis=1), uni.labels[uni.pair_mask])
    n_layers = int(sub.sources["layer"].max()) + 1
    out = sub.sources.copy()
    out["relative_depth"] = np.where(out["layer"] >= 0, out["layer"] / max(n_layers - 1, 1), np.nan)
    out["auroc"] = auroc
    out["n_pos"], out["n_neg"] = uni.n_pos, int(uni.pair_mask.sum()) - uni.n_pos
    return out


def _first(frame: pd.DataFrame | None, **where) -> pd.Series | None:
    if frame is None or frame.empty:
        return None
    sel = frame
    for column, value in where.items():
        sel = sel[sel[column] == value]
    return sel.iloc[0] if len(sel) else None


def confound_summary(tables: dict[str, pd.DataFrame], *, readout_layer: int, primary_n_strata: int) -> dict:
    """One run's headline numbers (NaN where the run lacks the analysis): incremental value and matched incremental
    value of gene + attention (AUROC delta and 95% CI; GroupKFold by perturbation, logistic), residualisation share
    retained (attention and correlation, OLS, first reference), degree-null excess of attention (and its p), CSSI-max
    gain at the primary level for the read-out layer (TF -> target), and the masked-behaviour change of the largest
    top-k head ablation (and its p)."""
    out = {}
    for name, key in (("incremental_value", "incremental"), ("incremental_value_matched", "matched")):
        r = _first(tables.get(name), split="perturbation", model="logistic", feature_set="gene+attention",
                   metric="auroc")
        out[f"{key}_delta"] = r["delta"] if r is not None else np.nan
        out[f"{key}_ci"] = f"[{r['delta_ci_low']:.3f}, {r['delta_ci_high']:.3f}]" if r is not None else ""
    res = tables.get("residualisation")
    for edge in ("attention", "correlation"):
        r = _first(res, edge=edge, model="ols")
        out[f"retained_{edge}"] = r["retained"] if r is not None else np.nan
    r = _first(tables.get("degree_null"), edge="attention")
    out["degree_excess"], out["degree_p"] = (r["excess"], r["p_excess"]) if r is not None else (np.nan, np.nan)
    r = _first(tables.get("cssi_curve"), edge_type="attention_layer_mean", layer=readout_layer,
               n_strata=primary_n_strata, aggregation="max", metric="auroc", direction="tf_to_target")
    out["cssi_gain"] = r["delta"] if r is not None else np.nan
    abl = tables.get("ablation_results")
    top = abl[(abl["family"] == "top_k") & (abl["readout"] == "mlm_loss")] if abl is not None else None
    if top is not None and len(top):
        r = top.sort_values("k").iloc[-1]
        out["ablation_top_k"], out["ablation_delta"], out["ablation_p"] = int(r["k"]), r["delta"], r["p"]
    else:
        out["ablation_top_k"], out["ablation_delta"], out["ablation_p"] = 0, np.nan, np.nan
    return out


def nearest_layer(relative_depth: float, n_layers: int) -> int:
    """The layer of an ``n_layers`` model closest to ``relative_depth`` (layer / (layers - 1))."""
    return int(round(relative_depth * max(n_layers - 1, 1)))


def edge_consistency(edges: dict[str, EdgeScores]) -> pd.DataFrame:
    """Cross-dataset / cross-model consistency of edge scores (paper registry section 4): for every pair of runs
    (``edges``: label -> :meth:`EdgeScores.restrict`-ed to the same genes, each with its layers' head means and a
    ``spearman`` source), Spearman between run a's layer and run b's layer at the nearest relative depth, and
    between their correlation edges, over the ordered off-diagonal gene pairs both runs co-observed. Rows: run_a,
    run_b, edge_type, layer_a, layer_b, rho, p, n."""
    rows = []
    labels = list(edges)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            ea, eb = edges[a], edges[b]
            mask = ea.observed & eb.observed
            np.fill_diagonal(mask, False)
            layers_a = ea.sources.index[ea.sources["edge_type"] == "attention_layer_mean"]
            n_a = len(layers_a)
            n_b = int((eb.sources["edge_type"] == "attention_layer_mean").sum())
            pairs = [("attention_layer_mean", int(ea.sources.loc[s, "layer"]),
                      nearest_layer(int(ea.sources.loc[s, "layer"]) / max(n_a - 1, 1), n_b)) for s in layers_a]
            pairs.append(("spearman", -1, -1))
            for etype, la, lb in pairs:
                x = ea.scores[ea.source_index(etype, la)][mask]
                y = eb.scores[eb.source_index(etype, lb)][mask]
                rho, p = spearmanr(x, y) if mask.sum() > 2 else (np.nan, np.nan)
                rows.append((a, b, etype, la, lb, float(rho), float(p), int(mask.sum())))
    return pd.DataFrame(rows, columns=["run_a", "run_b", "edge_type", "layer_a", "layer_b", "rho", "p", "n"])


def feature_summary(layers: pd.DataFrame, programmes: pd.DataFrame | None, regulatory: pd.DataFrame | None, *,
                    n_layers: int) -> pd.DataFrame:
    """One row per SAE layer of a run (the feature-level summary for the Compare page): relative depth,
    reconstruction (fraction of variance explained, behaviour change with the reconstruction spliced in), dead, dense,
    SVD-visible features, co-activation modules, causal specificity (median own / other genes), the best feature's r
    with any cell state and any TF's regulon activity (and the shuffled-activation null where trained), and the
    regulatory test's TFs passing, tested and passing against another TF's targets. ``layers``: schema
    ``sae_layers``; ``programmes``: ``sae_programmes``; ``regulatory``: ``sae_regulatory`` (None: the run has none)."""
    out = pd.DataFrame({
        "layer": layers["layer"].astype(int), "relative_depth": layers["layer"] / max(n_layers - 1, 1),
        "n_features": layers["n_features"], "fve": layers["fraction_variance_explained"],
        "behaviour_delta": layers["behaviour_delta"], "n_dead": layers["n_dead"], "n_dense": layers["n_dense"],
        "n_svd_visible": layers["n_svd_visible"], "n_modules": layers["n_modules"],
        "causal_specificity": layers["causal_specificity"]}).set_index("layer")
    for kind, name in (("cell_state", "state"), ("tf_activity", "tf")):
        best = (programmes[programmes["kind"] == kind].groupby("layer")[["r", "null_r"]].max()
                if programmes is not None and len(programmes) else pd.DataFrame(columns=["r", "null_r"]))
        out[f"best_{name}_r"] = best["r"].reindex(out.index)
        out[f"best_{name}_null_r"] = best["null_r"].reindex(out.index)
    if regulatory is not None and len(regulatory):
        counts = regulatory.groupby("layer").agg(regulatory_passing=("passes", "sum"), regulatory_tfs=("tf", "size"),
                                                 regulatory_null=("rotated_passes", "sum"))
        out = out.join(counts)
    else:
        out[["regulatory_passing", "regulatory_tfs", "regulatory_null"]] = np.nan
    return out.reset_index()
