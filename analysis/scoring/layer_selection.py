"""Layer selection done right (paper Supplementary Note 14.1): every layer's head-mean attention against correlation
with paired tests over perturbations, and 5-fold nested cross-validation over perturbations that picks the layer on
the training folds (highest mean perturbation-first AUROC) and scores it on the held-out perturbations only, so the
reported advantage over correlation is not inflated by choosing the layer on the data it is scored on.

Inputs are the rows of the ``perturbation_auroc`` table: per perturbation, the AUROC of each layer's head mean
(``attention_layer_mean``) and of the correlation edge."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from .stats import wilcoxon_p


def layer_matrix(per_pert: pd.DataFrame, correlation_edge: str) -> tuple[pd.DataFrame, pd.Series]:
    """(``[perturbations, layers]`` AUROC of each layer's head mean, correlation AUROC per perturbation), over the
    perturbations that have both, sorted by name."""
    att = per_pert[per_pert["edge_type"] == "attention_layer_mean"].pivot_table(index="perturbation", columns="layer",
                                                                                 values="auroc")
    corr = per_pert[per_pert["edge_type"] == correlation_edge].set_index("perturbation")["auroc"]
    common = sorted(set(att.dropna().index) & set(corr.index))
    return att.loc[common], corr.loc[common]


def layer_vs_correlation(att: pd.DataFrame, corr: pd.Series) -> pd.DataFrame:
    """Per layer: mean AUROC, mean advantage over correlation and the paired two-sided Wilcoxon p."""
    rows = []
    for layer in att.columns:
        diff = att[layer].to_numpy() - corr.to_numpy()
        rows.append({"layer": int(layer), "mean_auroc": float(att[layer].mean()), "advantage": float(diff.mean()),
                     "p": wilcoxon_p(diff), "n": int(diff.size)})
    return pd.DataFrame(rows)


def fold_of(perturbations: list[str], n_splits: int, seed: int) -> dict[str, int]:
    """Perturbation -> held-out fold (shuffled KFold over the sorted perturbation names; depends on names only)."""
    names = sorted(perturbations)
    n = min(n_splits, len(names))
    out = {}
    for k, (_, test) in enumerate(KFold(n_splits=n, shuffle=True, random_state=seed).split(names)):
        for i in test:
            out[names[i]] = k
    return out


def nested_selection(att: pd.DataFrame, corr: pd.Series, *, n_splits: int = 5, seed: int = 0
                     ) -> tuple[pd.DataFrame, dict]:
    """Nested CV: for each fold, the layer with the highest mean AUROC on the *training* perturbations (ties: the
    shallower layer), scored on the held-out ones. Returns per held-out perturbation (fold, perturbation,
    selected_layer, attention_auroc, correlation_auroc) and a summary: pooled held-out advantage and its two-sided
    Wilcoxon p, the Bonferroni-corrected smallest per-fold p (``p_bonferroni``: min over folds of k x p_fold),
    and fold stability (the share of folds choosing the modal layer). Needs two or more perturbations."""
    if len(att) < 2:
        raise ValueError("nested layer selection needs at least two perturbations")
    folds = fold_of(list(att.index), n_splits, seed)
    fold = np.array([folds[p] for p in att.index])
    rows, fold_p, chosen = [], [], []
    for k in range(fold.max() + 1):
        train, test = fold != k, fold == k
        means = att[train].mean(axis=0)
        layer = int(means.index[int(np.argmax(means.to_numpy()))])   # argmax keeps the first (shallower) on ties
        chosen.append(layer)
        a, c = att.loc[test, layer].to_numpy(), corr[test].to_numpy()
        fold_p.append(wilcoxon_p(a - c))
        rows += [{"fold": k, "perturbation": p, "selected_layer": layer, "attention_auroc": float(x),
                  "correlation_auroc": float(y)} for p, x, y in zip(att.index[test], a, c)]
    table = pd.DataFrame(rows)
    diff = (table["attention_auroc"] - table["correlation_auroc"]).to_numpy()
    modal = max(set(chosen), key=chosen.count)
    summary = {"advantage": float(diff.mean()), "p_pooled": wilcoxon_p(diff),
               "p_bonferroni": float(min(1.0, np.nanmin(fold_p) * len(fold_p))) if np.isfinite(fold_p).any() else np.nan,
               "modal_layer": int(modal), "stability": chosen.count(modal) / len(chosen), "n_folds": len(chosen),
               "n": int(diff.size)}
    return table, summary


def bonferroni_layer_search(att: pd.DataFrame, corr: pd.Series) -> dict:
    """The un-nested search the paper corrects (SN16.2 registry 30, "Bonferroni corr., 18-layer search"): the layer
    with the highest mean AUROC over every perturbation (ties: the shallower), its paired two-sided Wilcoxon p
    against correlation, and that p times the number of layers searched (capped at 1)."""
    means = att.mean(axis=0)
    layer = int(means.index[int(np.argmax(means.to_numpy()))])
    diff = att[layer].to_numpy() - corr.to_numpy()
    p = wilcoxon_p(diff)
    return {"layer": layer, "advantage": float(diff.mean()), "p": p, "n_layers": int(att.shape[1]),
            "p_bonferroni": float(min(1.0, p * att.shape[1])) if np.isfinite(p) else np.nan, "n": int(diff.size)}


def held_out_ci(table: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile CI of the pooled held-out advantage (attention minus correlation) of :func:`nested_selection`'s
    table, resampling held-out perturbations (the paper's 1,000-draw bootstrap, registry 30)."""
    diff = (table["attention_auroc"] - table["correlation_auroc"]).to_numpy()
    draws = diff[np.random.default_rng(seed).integers(0, diff.size, (n_boot, diff.size))].mean(axis=1)
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))

