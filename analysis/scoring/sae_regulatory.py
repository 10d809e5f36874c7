"""The companion paper's CRISPRi regulatory test of SAE features: for each perturbed TF, do the features
that respond to its knock-down prefer its reference targets?

Per TF and layer: the features' per-cell activity (mean activation over a cell's gene positions) in the TF's
knock-down cells against the control cells; the ``m`` features with the largest standardised mean difference
(|Cohen's d|, pooled SD) respond. A feature's target preference is the share of its activation (its mean activation
per gene, summed over the universe of observed genes) that falls on the TF's targets, over the targets' share of the
universe (1: no preference). The test's statistic is the responding features' mean preference; ``p`` is against
``n_null`` random sets of ``m`` live features (features that fire in these cells and on some gene), ``(1 + #null >=
observed) / (n_null + 1)``. A TF passes at BH q < 0.05 over the layer's TFs. Reported alongside (descriptive): the
overlap of the union of the responding features' top genes (:func:`analysis.scoring.sae_features.top_genes`) with
the targets and its one-sided hypergeometric p; and ``rotated_*``, the same test of each TF's responding features
against the next TF's targets (sorted order): how many pass where no regulatory link is expected.

The statistic departs from a thresholded gene-set overlap (which the overlap columns report): on a small panel the
union of a few features' top genes covers much of the universe and the overlap has little power; the preference
uses every gene's activation and needs no cut-off."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import hypergeom

from .registry import StatsRegistry
from .stats import benjamini_hochberg

ALPHA = 0.05


def responding_features(perturbed: np.ndarray, control: np.ndarray, m: int) -> np.ndarray:
    """Indices of the ``m`` features (columns of ``perturbed`` ``[n_p, F]`` and ``control`` ``[n_c, F]``) whose
    activity differs most between the two groups by |Cohen's d|; features constant in both are never chosen."""
    n_p, n_c = len(perturbed), len(control)
    pooled = ((n_p - 1) * perturbed.var(axis=0, ddof=1) + (n_c - 1) * control.var(axis=0, ddof=1)) / (n_p + n_c - 2)
    diff = perturbed.mean(axis=0) - control.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(pooled > 0, np.abs(diff) / np.sqrt(pooled), np.where(diff != 0, np.inf, -1.0))
    order = np.argsort(-d, kind="stable")
    return order[:m][d[order[:m]] >= 0]


def target_overlap(features: np.ndarray, feature_genes: np.ndarray, targets: np.ndarray, universe: np.ndarray
                   ) -> tuple[int, int]:
    """(overlap with ``targets``, size) of the union of ``features``' genes (``feature_genes`` ``[F, G]`` bool)
    within ``universe`` ``[G]`` bool."""
    genes = feature_genes[features].any(axis=0) & universe
    return int((genes & targets).sum()), int(genes.sum())


def target_preference(means: np.ndarray, targets: np.ndarray, universe: np.ndarray) -> np.ndarray:
    """``[F]`` each feature's share of activation on ``targets`` over the targets' share of ``universe`` (module
    doc); ``means`` ``[F, G]`` mean activation per gene; NaN for a feature silent on every gene of the universe."""
    on = targets & universe
    mass = means[:, universe].sum(axis=1)
    share = on.sum() / universe.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mass > 0, means[:, on].sum(axis=1) / mass / share, np.nan)


def regulatory_test(chosen: np.ndarray, live: np.ndarray, means: np.ndarray, feature_genes: np.ndarray,
                    targets: np.ndarray, universe: np.ndarray, *, n_null: int, rng: np.random.Generator) -> dict:
    """One TF's test (module doc) of its responding features ``chosen`` (:func:`responding_features`) against random
    sets of as many features drawn from ``live`` ``[F]`` bool (those that fire in its cells or the controls);
    ``means`` ``[F, G]`` and ``feature_genes`` ``[F, G]`` bool (top genes) of the layer's features, ``targets``
    ``[G]`` bool."""
    preference = target_preference(means, targets, universe)
    pool = np.flatnonzero(live & ~np.isnan(preference))
    observed = float(np.nanmean(preference[chosen])) if chosen.size else np.nan
    null = np.array([preference[rng.choice(pool, min(chosen.size, pool.size), replace=False)].mean()
                     for _ in range(n_null)])
    overlap, size = target_overlap(chosen, feature_genes, targets, universe)
    n_universe, n_targets = int(universe.sum()), int((targets & universe).sum())
    return {"n_responding": int(chosen.size), "responding": ",".join(map(str, chosen)), "preference": observed,
            "null_preference": float(null.mean()), "p": float((1 + (null >= observed).sum()) / (n_null + 1)),
            "overlap": overlap, "feature_genes": size, "n_targets": n_targets,
            "expected": size * n_targets / n_universe if n_universe else np.nan,
            "p_hypergeom": float(hypergeom.sf(overlap - 1, n_universe, n_targets, size))}


def regulatory_table(layer: int, activity: np.ndarray, groups: dict[str, np.ndarray], control: np.ndarray,
                     means: np.ndarray, feature_genes: np.ndarray, targets: dict[str, np.ndarray],
                     universe: np.ndarray, *, m: int, n_null: int, seed: int) -> pd.DataFrame:
    """Every TF's test on one layer (schema ``sae_regulatory``): ``activity`` ``[cells, F]``, ``groups`` TF -> its
    knock-down cells' rows, ``control`` the control rows, ``means`` / ``feature_genes`` as in
    :func:`regulatory_test`, ``targets`` TF -> ``[G]`` bool (TFs in sorted order; the rotated test pairs each TF's
    responding features with the next one's targets)."""
    tfs = sorted(set(groups) & set(targets))
    rows = []
    for i, tf in enumerate(tfs):
        rng = np.random.default_rng([seed, layer, i])
        perturbed = activity[groups[tf]]
        chosen = responding_features(perturbed, activity[control], m)
        live = (perturbed > 0).any(axis=0) | (activity[control] > 0).any(axis=0)
        common = dict(n_null=n_null, rng=rng)
        row = regulatory_test(chosen, live, means, feature_genes, targets[tf], universe, **common)
        other = tfs[(i + 1) % len(tfs)]
        rotated = (regulatory_test(chosen, live, means, feature_genes, targets[other], universe, **common)
                   if len(tfs) > 1 else {"p": np.nan})
        rows.append({"layer": layer, "tf": tf, "n_perturbed": int(groups[tf].size), "n_control": int(control.size),
                     **row, "rotated_tf": other if len(tfs) > 1 else "", "rotated_p": rotated["p"]})
    table = pd.DataFrame(rows)
    for prefix in ("", "rotated_"):
        p = table[f"{prefix}p"].to_numpy(dtype=float) if len(table) else np.zeros(0)
        q = np.full(p.size, np.nan)
        q[~np.isnan(p)] = benjamini_hochberg(p[~np.isnan(p)])
        table[f"{prefix}q"] = q
        table[f"{prefix}passes"] = q < ALPHA
    return table


def regulatory_tests(table: pd.DataFrame, reference: str) -> StatsRegistry:
    """Each (layer, TF) test of ``table`` (schema ``sae_regulatory``) in the statistics registry, descriptive."""
    reg = StatsRegistry()
    for r in table.itertuples():
        reg.register("sae_regulatory", f"L{r.layer} features responding to {r.tf} knock-down prefer its {reference} "
                     "targets", "random-feature-set null (one-sided)", r.p, effect=r.preference - r.null_preference,
                     effect_name="target preference - null mean", n=r.n_perturbed, confirmatory=False)
    return reg
