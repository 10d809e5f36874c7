"""Cross-context replication (paper sections 2.6-2.7, Supplementary Note 14.9): the per-perturbation attention
advantage over correlation (attention AUROC - correlation AUROC of the same perturbation, perturbation-first),
per layer, with a perturbation-bootstrap 95% CI of its mean (10,000 resamples, as SN14.9) and the paired Wilcoxon
test; across runs (screens, modalities, models), a Mann-Whitney test of whether two contexts' read-out-layer
advantages differ. The HVG-protocol confound check (SN14.9) compares the same screen's advantage under its own
universe and under the top-HVG universe without forced perturbed genes (table ``universe_check``).

Inputs are rows of the ``perturbation_auroc`` table (or ``universe_check``, which has the same per-perturbation
layout once pivoted); nothing here needs a model.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from .layer_selection import layer_matrix
from .registry import StatsRegistry, correct
from .stats import wilcoxon_p

N_BOOT = 10_000


def bootstrap_mean_ci(values: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0, chunk: int = 1000
                      ) -> tuple[float, float]:
    """Percentile 95% CI of the mean of ``values`` under resampling with replacement (``n_boot`` draws, drawn
    ``chunk`` at a time so memory stays ``chunk x n``)."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng([seed, 37])
    means = np.concatenate([v[rng.integers(0, v.size, (min(chunk, n_boot - i), v.size))].mean(axis=1)
                            for i in range(0, n_boot, chunk)])
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def advantage_by_layer(att: pd.DataFrame, corr: pd.Series, *, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """Per layer of ``att`` (``[perturbations, layers]`` AUROC; ``corr`` the same perturbations' correlation AUROC,
    as :func:`analysis.scoring.layer_selection.layer_matrix` returns them): n, attention_mean, correlation_mean,
    advantage (mean of the differences), ci_low, ci_high, p (paired two-sided Wilcoxon), share_attention_better."""
    rows = []
    for layer in att.columns:
        diff = att[layer].to_numpy() - corr.to_numpy()
        lo, hi = bootstrap_mean_ci(diff, n_boot=n_boot, seed=seed)
        rows.append({"layer": int(layer), "n": int(diff.size), "attention_mean": float(att[layer].mean()),
                     "correlation_mean": float(corr.mean()), "advantage": float(diff.mean()), "ci_low": lo,
                     "ci_high": hi, "p": wilcoxon_p(diff), "share_attention_better": float((diff > 0).mean())})
    return pd.DataFrame(rows)


def per_perturbation_advantage(per_pert: pd.DataFrame, correlation_edge: str, layer: int) -> pd.Series:
    """Attention (``layer``'s head mean) minus correlation AUROC, per perturbation."""
    att, corr = layer_matrix(per_pert, correlation_edge)
    return (att[layer] - corr).rename("advantage") if layer in att.columns else pd.Series(dtype=float)


def replicate(runs: dict[str, dict], *, n_boot: int = N_BOOT, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Replication across runs. ``runs``: label -> {"per_pert": perturbation_auroc rows, "correlation_edge": the
    run's primary correlation edge type, "readout_layer": int, "n_layers": int}. Returns (one row per run and layer of
    :func:`advantage_by_layer` plus run and relative_depth; the replication tests with BH q over this comparison:
    per run and layer attention vs correlation, confirmatory at each run's read-out layer, and per pair of runs the
    Mann-Whitney test that their read-out advantages differ, confirmatory: the planned comparison of contexts)."""
    reg = StatsRegistry()
    rows, readout_adv = [], {}
    for label, r in runs.items():
        att, corr = layer_matrix(r["per_pert"], r["correlation_edge"])
        if len(att) < 2:
            continue
        table = advantage_by_layer(att, corr, n_boot=n_boot, seed=seed)
        table.insert(0, "run", label)
        table["relative_depth"] = table["layer"] / max(r["n_layers"] - 1, 1)
        rows.append(table)
        for t in table.itertuples():
            reg.register("replication", f"{label}: attention L{t.layer} vs correlation",
                         "Wilcoxon signed-rank (paired)", t.p, effect=t.advantage, effect_name="mean advantage",
                         n=t.n, confirmatory=t.layer == r["readout_layer"])
        readout_adv[label] = (att[r["readout_layer"]] - corr).to_numpy()
    for a, b in combinations(readout_adv, 2):
        x, y = readout_adv[a], readout_adv[b]
        p = float(mannwhitneyu(x, y, alternative="two-sided").pvalue)
        reg.register("replication", f"read-out advantage differs: {a} vs {b}", "Mann-Whitney U (two-sided)", p,
                     effect=float(x.mean() - y.mean()), effect_name="difference of mean advantage",
                     n=int(x.size + y.size))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    tests = correct(pd.DataFrame(reg.rows)) if reg.rows else pd.DataFrame()
    return table, tests


def universe_protocols(check: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """SN14.9 summary of a ``universe_check`` table: per protocol and layer, :func:`advantage_by_layer`'s columns
    plus n_genes; and per layer the paired Wilcoxon p that the advantage moves between the protocols
    (``p_protocol``, on the perturbations evaluable under both)."""
    rows = []
    for protocol, grp in check.groupby("protocol", sort=False):
        att = grp.pivot_table(index="perturbation", columns="layer", values="attention_auroc")
        corr = grp.groupby("perturbation")["correlation_auroc"].first().loc[att.index]
        rows.append(advantage_by_layer(att, corr, n_boot=n_boot, seed=seed).assign(
            protocol=protocol, n_genes=int(grp["n_genes"].iloc[0])))
    out = pd.concat(rows, ignore_index=True)
    check = check.assign(advantage=check["attention_auroc"] - check["correlation_auroc"])
    wide = check.pivot_table(index=["perturbation", "layer"], columns="protocol", values="advantage").dropna()
    if wide.shape[1] == 2:
        p = {layer: wilcoxon_p(g.iloc[:, 1].to_numpy() - g.iloc[:, 0].to_numpy())
             for layer, g in wide.groupby(level="layer")}
        out["p_protocol"] = out["layer"].map(p)
    return out
