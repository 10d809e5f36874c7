"""Statistics of an ablation sweep (paper sections 2.5 and 4.5, Supplementary Notes 14.3, 14.4): every read-out of
every intervention paired per cell (behaviour, fidelity, target recall) or per perturbation (perturbation AUROC) with
the unablated baseline on the same cells (Wilcoxon signed-rank, normal CI of the mean difference), BH q within each
read-out; the read-out layer's reference AUROC as a point estimate. The per-cell read-outs come from
:func:`analysis.interp.ablation.ablate`."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from .ranking import Universe, auroc_from_ranks
from .stats import benjamini_hochberg, wilcoxon_p

# read-outs computed from the read-out layer's attention, recomputed from the q / k entering that layer
ATTENTION_READOUTS = ("reference_auroc", "perturbation_auroc")


def structural_null(specs: Sequence, readout_layer: int) -> bool:
    """True when interventions ``specs`` (``InterventionSpec``s: anything with a ``layer``) cannot change the
    attention read-outs (:data:`ATTENTION_READOUTS`): those are the read-out layer's attention recomputed from the
    query and key of the hidden state *entering* that layer, so an intervention at the read-out layer (head outputs,
    uniform attention, its MLP) or after it changes them by exactly zero, by construction. Such a result is an artefact of the read-out, not evidence that the heads do nothing
    (the paper's "exactly baseline" for all heads of L14 and MLPs of L13-L15 with an L13 read-out look like it)."""
    return bool(specs) and min(s.layer for s in specs) >= readout_layer


def _readout_auroc(a, universe: Universe, n_panel: int) -> float:
    """Reference-recovery AUROC of the read-out layer's head-mean attention in ``a`` (a ``ReadoutAccumulator``)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(a.counts > 0, a.sums / np.maximum(a.counts, 1), np.nan).reshape(n_panel, n_panel)
    scores = np.nan_to_num(mean[universe.tf_rows][universe.pair_mask])
    return float(auroc_from_ranks(rankdata(scores), universe.labels[universe.pair_mask]))


def paired_row(values: np.ndarray, baseline: np.ndarray) -> dict:
    """One read-out against the baseline on the same cells (``[cells]`` each): means, the mean paired difference
    with its normal 95% CI, and the two-sided Wilcoxon signed-rank p. A read-out that is not finite in some cell
    (an edit that overflowed) is not a test: its CI and p are NaN, so it stays out of BH and the registry."""
    diff = values - baseline
    if not np.isfinite(diff).all():
        return {"value": float(values.mean()), "baseline": float(baseline.mean()), "delta": float(diff.mean()),
                "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "n": int(diff.size)}
    se = diff.std(ddof=1) / np.sqrt(diff.size) if diff.size > 1 else np.nan
    return {"value": float(values.mean()), "baseline": float(baseline.mean()), "delta": float(diff.mean()),
            "ci_low": float(diff.mean() - 1.96 * se), "ci_high": float(diff.mean() + 1.96 * se),
            "p": wilcoxon_p(diff), "n": int(diff.size)}


def summarise(acc: dict, items: Sequence, universe: Universe, n_panel: int, *, readout_layer: int,
              perturbation_auroc: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, fidelity) of sweep ``items`` (``analysis.interp.ablation.SweepItem``) from per-cell read-outs
    ``acc`` (key -> ``ReadoutAccumulator``, ``baseline`` included): tidy rows with paired tests against the baseline
    and BH q within each read-out (schema ``ablation_results``), and per-layer hidden-state cosine distance to the
    baseline, mean and max over cells (schema ``ablation_fidelity``). ``structural`` marks the attention read-outs of
    an intervention at or after ``readout_layer`` (:func:`analysis.interp.interventions.structural_null`): they are
    kept (delta exactly 0) but left out of BH and of the registry. ``universe``: the read-out layer's reference
    recovery pairs; ``perturbation_auroc``: per-perturbation AUROC of the read-out layer's sums (see
    :func:`analysis.scoring.perturbation.readout_auroc`)."""
    base = acc["baseline"]
    g = n_panel
    base_auc = _readout_auroc(base, universe, g)
    base_pert = perturbation_auroc(base.sums, base.counts) if perturbation_auroc else None
    rows, fid = [], []
    for item in items:
        a = acc[item.key]
        info = {"intervention": item.key, "family": item.family, "k": item.k, "draw": item.draw}
        rows.append({**info, "readout": "mlm_loss", **paired_row(a.loss, base.loss)})
        rows.append({**info, "readout": "mlm_accuracy", **paired_row(a.accuracy, base.accuracy)})
        rows.append({**info, "readout": "output_cosine_distance", **paired_row(a.output_cos, base.output_cos)})
        has = ~np.isnan(base.target_recall)
        if has.sum() > 1:
            rows.append({**info, "readout": "target_recall_loss",
                         **paired_row(a.target_recall[has], base.target_recall[has])})
        auc = _readout_auroc(a, universe, g)
        rows.append({**info, "readout": "reference_auroc", "value": auc, "baseline": base_auc, "delta": auc - base_auc,
                     "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "n": universe.n_pos})
        if base_pert is not None and base_pert.size:
            rows.append({**info, "readout": "perturbation_auroc", **paired_row(perturbation_auroc(a.sums, a.counts), base_pert)})
        for layer in range(a.hidden_cos.shape[1]):
            fid.append({**info, "layer": layer, "hidden_cos_mean": float(a.hidden_cos[:, layer].mean()),
                        "hidden_cos_max": float(a.hidden_cos[:, layer].max())})
    results = pd.DataFrame(rows)
    null_by_item = {item.key: structural_null(item.specs, readout_layer) for item in items}
    results["structural"] = results["readout"].isin(ATTENTION_READOUTS) & results["intervention"].map(null_by_item)
    results["q"] = np.nan
    for _, grp in results[~results["structural"]].groupby("readout"):
        if grp["p"].notna().any():
            results.loc[grp.index, "q"] = benjamini_hochberg(grp["p"].to_numpy())
    return results, pd.DataFrame(fid)


RANKING_READOUTS = ("mlm_loss", "perturbation_auroc")   # the behaviour the paper reads, then its perturbation read-out


def ranking_comparison(results: pd.DataFrame, readout: str) -> pd.DataFrame:
    """Does the head ranking pick heads that matter? Per k of an ablation sweep (schema ``ablation_results``), the
    change in ``readout`` from ablating the top-ranked k heads beside the same-size random draws (``random_k``) and
    the bottom-ranked k (``bottom_k``), with the one-sided empirical rank p of the top-k set among the random draws:
    ``(1 + #{draws moving the read-out at least as much, |delta|}) / (1 + draws)``, whose smallest value is
    ``1 / (1 + draws)`` (the paper compares top-ranked with random ablation, section 2.5 and SN14.4, "random ablation
    causes drop"). Columns: k, top, random_mean (signed), random_abs_mean and random_abs_max (of |delta|),
    n_random, bottom, rank_p, smallest_p; one row per k with a top-k set and at least one random draw that differs
    from it (k = every head ranks nothing), structural nulls left out."""
    rows = results[(results["readout"] == readout) & ~results["structural"].astype(bool)]
    out = []
    for k, grp in rows.groupby("k", sort=True):
        top_rows, draw_rows = grp[grp["family"] == "top_k"], grp[grp["family"] == "random_k"]
        top, draws = top_rows["delta"], draw_rows["delta"]
        if top.empty or draws.empty or not np.isfinite(top.iloc[0]) or not np.isfinite(draws).all():
            continue
        if (draw_rows["intervention"] == top_rows["intervention"].iloc[0]).all():
            continue                        # k = every head: no ranking left to compare
        bottom = grp[grp["family"] == "bottom_k"]["delta"]
        n = int(draws.size)
        out.append({"k": int(k), "top": float(top.iloc[0]), "random_mean": float(draws.mean()),
                    "random_abs_mean": float(draws.abs().mean()), "random_abs_max": float(draws.abs().max()),
                    "n_random": n,
                    "bottom": float(bottom.iloc[0]) if len(bottom) else np.nan,
                    "rank_p": (1 + int((draws.abs() >= abs(top.iloc[0])).sum())) / (1 + n),
                    "smallest_p": 1 / (1 + n)})
    return pd.DataFrame(out, columns=["k", "top", "random_mean", "random_abs_mean", "random_abs_max", "n_random",
                                      "bottom", "rank_p", "smallest_p"])
