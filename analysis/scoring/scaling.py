"""Recovery against the number of cells (paper section 2.2, Supplementary Note 1; registry sections 1, 12 and 13).

Attention: CSSI's grouped extraction pass accumulated attention per *random group* of the attention cells
(:mod:`analysis.scoring.cssi`), so a subsample of cells is a union of random groups and the whole analysis (several
cell counts, several seeds, bootstrap CIs) costs no forward pass beyond that one. Each seed orders the ``M`` groups
at random and takes the first ``m`` for every count, so one seed's subsamples are nested, as archived runs at 200 /
1,000 / 3,000 cells are. Recovery is scored as the head ranking scores it: AUROC over the evaluable (TF, gene)
pairs and top-k F1 (``f1``: k = the number of reference edges, as CSSI; ``f1_at_<k>`` for the paper's fixed cut-offs),
for every kept layer's head mean and for Spearman correlation on the same cells.

Tests (SN1): per seed, the change between consecutive cell counts, with the exact one-sided sign test for
degradation (the paper's 9/9 runs), and the Spearman trend of recovery against cell count over all (seed, count)
points; for the read-out layer's head mean and for correlation, on AUROC and on F1, since the paper's finding is
metric-dependent (F1 degrades while AUROC improves).

Cell-bootstrap CIs (SN13, registry 12): at each count, ``n_boot`` draws of ``m`` random groups with replacement from
all ``M``, and the percentile 95% CI of AUROC. Departure: the resampling unit is a random group of about cells / M
cells, not one cell, because per-cell attention is never stored; the groups are random, so this is a block
bootstrap of exchangeable cells. A draw repeats about a third of its groups, so it averages fewer distinct cells than
the data and its AUROC sits below the all-cells value when averaging still helps: the percentile CI errs towards
chance (conservative for "above 0.5").

Controlled composition (SN1, registry 13; correlation edges, as the paper used): (i) one cell state at growing n,
(ii) a fixed equal mixture of the states at growing n, (iii) fixed n with a growing number of states, each over
seeds, with a Spearman trend test of AUROC against n, or against the number of states.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from .cssi import CSSIData, PairSet, recovery, spearman_by_stratum
from .ranking import auroc_from_ranks, ranks_and_order, top_k_f1
from .registry import StatsRegistry
from .stats import spearman

SCALED_SITES = ("attention_layer_mean", "spearman", "spearman_absolute")
PER_SOURCE_K = 100      # SN1: "a sparse GRN by retaining the top-100 targets per source gene"
CONDITIONS = ("single_state", "fixed_mixture", "heterogeneity")


def unit_counts(n_units: int, fractions: tuple[float, ...]) -> list[int]:
    """Distinct numbers of random groups for the shares ``fractions`` of ``n_units`` (at least one group)."""
    return sorted({max(1, int(round(f * n_units))) for f in fractions})


def per_source_top(scores: np.ndarray, source: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """``[S, N]`` bool: for each row of ``scores`` ``[S, N]``, the ``k`` highest-scoring pairs of every source gene
    (``source``, ``target`` ``[N]``: each pair's genes; ties go to the lower target index), the paper's sparse GRN
    of SN1. Each row is laid out as a dense ``[sources, genes]`` block (-inf off the pairs) and sorted row-wise."""
    sources, src = np.unique(source, return_inverse=True)
    width = int(target.max()) + 1
    out = np.zeros(scores.shape, dtype=bool)
    for s, row in enumerate(np.nan_to_num(scores, nan=0.0)):
        dense = np.full((sources.size, width), -np.inf)
        dense[src, target] = row
        top = np.argsort(-dense, axis=1, kind="stable")[:, :k]                  # [sources, k] target indices
        chosen = np.zeros_like(dense, dtype=bool)
        np.put_along_axis(chosen, top, True, axis=1)
        out[s] = chosen[src, target]
    return out


def set_f1(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """F1 of predicted edge sets ``[S, N]`` bool against ``labels`` ``[N]``: 2 hits / (predicted + reference)."""
    hits = (predicted & labels).sum(axis=1)
    return 2 * hits / (predicted.sum(axis=1) + labels.sum())


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Jaccard index of two ``[S, N]`` bool edge sets (1 for two empty sets)."""
    union = (a | b).sum(axis=1)
    return np.where(union > 0, (a & b).sum(axis=1) / np.maximum(union, 1), 1.0)


def site_recovery(scores: np.ndarray, labels: np.ndarray, ks: list[int]) -> dict[str, np.ndarray]:
    """``{"auroc": [S], "f1_at_<k>": [S], ...}`` for ``scores`` ``[S, N]`` (NaN scored as 0), from one sort."""
    flat = np.nan_to_num(scores, nan=0.0)
    ranks, order = ranks_and_order(flat)
    out = {"auroc": auroc_from_ranks(ranks, labels)}
    for k in ks:
        out[f"f1_at_{k}"] = top_k_f1(flat, labels, k, order)[0]
    return out


class UnitSampler:
    """The random groups of a :class:`CSSIData` as resampling units: ``weights(units)`` and ``cells(units)`` give
    the :meth:`CSSIData.union_scores` arguments for a list of units (repeats allowed, 0..M-1)."""

    def __init__(self, data: CSSIData):
        self.data, self.n_fine = data, data.n_fine
        self.n_units = data.group_counts.shape[0] - self.n_fine
        unit_of_cell = data.random_group - self.n_fine
        self.members = [np.nonzero(unit_of_cell == u)[0] for u in range(self.n_units)]
        keep = data.sites["edge_type"].isin(SCALED_SITES).to_numpy()
        self.site_rows = np.nonzero(keep)[0]
        self.sites = data.sites.iloc[self.site_rows].reset_index(drop=True)

    def scores(self, units: np.ndarray) -> np.ndarray:
        """``[sites kept, N]`` pair scores over the cells of ``units`` (each as often as listed)."""
        weights = np.zeros(self.data.group_counts.shape[0])
        np.add.at(weights, self.n_fine + np.asarray(units), 1.0)
        cells = np.concatenate([self.members[u] for u in units])
        return self.data.union_scores(weights, cells)[self.site_rows]


def _ks(data: CSSIData, top_k: tuple[int, ...]) -> list[int]:
    n = data.pairs.labels.size
    return sorted({k for k in top_k if k <= n} | {data.top_k})


def _names(metric: str, k_reference: int, top_k: tuple[int, ...]) -> list[str]:
    """Table names of one :func:`site_recovery` metric: ``f1`` for k = reference edges, ``f1_at_<k>`` for the fixed
    cut-offs (a cut-off equal to the reference-edge count is reported under both)."""
    if metric == "auroc" or metric.startswith("f1_per_source_"):
        return [metric]
    k = int(metric.rsplit("_", 1)[1])
    return (["f1"] if k == k_reference else []) + ([metric] if k in top_k else [])


def cell_count_curves(data: CSSIData, *, fractions: tuple[float, ...], n_seeds: int, top_k: tuple[int, ...],
                   seed: int = 0, per_source_k: int = PER_SOURCE_K) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Recovery of every kept layer's head mean and of correlation at each cell count, per seed, and how much the
    seeds' sparse GRNs agree. ``curve`` rows: seed, n_units, n_cells, edge_type, layer, head, label, metric
    (``auroc``; ``f1`` with k = reference edges; ``f1_at_<k>``; ``f1_per_source_<per_source_k>``, F1 of the top
    ``per_source_k`` targets of each source, SN1's GRN), value. ``agreement`` rows (registry 1's robustness across
    seeds): n_units, n_cells (mean over seeds), edge_type, layer, head, label, jaccard_mean and jaccard_min over the
    pairs of seeds of those per-source edge sets, n_pairs."""
    per_source_metric = f"f1_per_source_{per_source_k}"
    sampler = UnitSampler(data)
    ks = _ks(data, top_k)
    rows, sets, cells = [], {}, {}
    for s in range(n_seeds):
        order = np.random.default_rng([seed, s, 17]).permutation(sampler.n_units)
        for m in unit_counts(sampler.n_units, fractions):
            units = order[:m]
            scores = sampler.scores(units)
            result = site_recovery(scores, data.pairs.labels, ks)
            grn = per_source_top(scores, data.pairs.tf, data.pairs.gene, per_source_k)
            result[per_source_metric] = set_f1(grn, data.pairs.labels)
            sets.setdefault(m, []).append(grn)
            n_cells = int(sum(sampler.members[u].size for u in units))
            cells.setdefault(m, []).append(n_cells)
            for metric, values in result.items():
                for name in _names(metric, data.top_k, top_k):
                    rows += [(s, m, n_cells, site.edge_type, site.layer, site.head, site.label, name, float(v))
                             for site, v in zip(sampler.sites.itertuples(index=False), values)]
    curve = pd.DataFrame(rows, columns=["seed", "n_units", "n_cells", "edge_type", "layer", "head", "label",
                                        "metric", "value"])
    agreement = []
    for m, grns in sets.items():
        pairs = [jaccard(grns[i], grns[j]) for i in range(len(grns)) for j in range(i + 1, len(grns))]
        if not pairs:
            continue
        values = np.stack(pairs)                                                    # [pairs of seeds, sites]
        agreement += [(m, float(np.mean(cells[m])), site.edge_type, site.layer, site.head, site.label,
                       float(values[:, i].mean()), float(values[:, i].min()), len(pairs))
                      for i, site in enumerate(sampler.sites.itertuples(index=False))]
    return curve, pd.DataFrame(agreement, columns=["n_units", "n_cells", "edge_type", "layer", "head", "label",
                                                   "jaccard_mean", "jaccard_min", "n_pairs"])


def bootstrap_curve(data: CSSIData, *, fractions: tuple[float, ...], n_boot: int, seed: int = 0) -> pd.DataFrame:
    """Group-bootstrap AUROC at each cell count (module doc): rows n_units, n_cells (the expected cells of m
    groups), edge_type, layer, head, label, auroc_mean, ci_low, ci_high (2.5 and 97.5 percentiles), n_boot."""
    sampler = UnitSampler(data)
    rng = np.random.default_rng([seed, 23])
    mean_size = np.mean([m.size for m in sampler.members])
    rows = []
    for m in unit_counts(sampler.n_units, fractions):
        draws = np.stack([site_recovery(sampler.scores(rng.integers(0, sampler.n_units, m)), data.pairs.labels,
                                        [])["auroc"] for _ in range(n_boot)])                    # [B, sites]
        for i, site in enumerate(sampler.sites.itertuples(index=False)):
            rows.append((m, int(round(m * mean_size)), site.edge_type, site.layer, site.head, site.label,
                         float(draws[:, i].mean()), float(np.quantile(draws[:, i], 0.025)),
                         float(np.quantile(draws[:, i], 0.975)), n_boot))
    return pd.DataFrame(rows, columns=["n_units", "n_cells", "edge_type", "layer", "head", "label", "auroc_mean",
                                       "ci_low", "ci_high", "n_boot"])


def sign_test_degradation(before: np.ndarray, after: np.ndarray) -> tuple[float, float, int]:
    """(one-sided exact sign-test p that recovery drops, share of non-tied pairs that dropped, non-tied pairs)."""
    d = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return float("nan"), float("nan"), 0
    down = int((d < 0).sum())
    return float(binomtest(down, d.size, 0.5, alternative="greater").pvalue), down / d.size, int(d.size)


def scaling_tests(curve: pd.DataFrame, *, readout_layer: int, reference: str) -> StatsRegistry:
    """Sign tests between consecutive cell counts and Spearman trends (module doc). Confirmatory: the first step's
    sign test of the read-out layer's F1 (the paper's headline scaling test); the rest descriptive. A step where
    every seed ties is not a test and is not registered."""
    reg = StatsRegistry()
    sites = ((("attention_layer_mean", readout_layer), f"L{readout_layer} head mean"), (("spearman", -1), "Spearman"))
    for (etype, layer), label in sites:
        for metric in ("f1", "auroc"):
            sel = curve[(curve["edge_type"] == etype) & (curve["layer"] == layer) & (curve["metric"] == metric)]
            if sel.empty:
                continue
            wide = sel.pivot_table(index="seed", columns="n_units", values="value")
            cells = sel.groupby("n_units")["n_cells"].mean()
            for step, (a, b) in enumerate(zip(wide.columns[:-1], wide.columns[1:])):
                p, share, n = sign_test_degradation(wide[a].to_numpy(), wide[b].to_numpy())
                if n == 0:          # every seed tied (e.g. F1 = 0 at both counts): nothing to test
                    continue
                reg.register("scaling", f"{label} {metric} ({reference}) drops from ~{cells[a]:.0f} to "
                             f"~{cells[b]:.0f} cells", "exact sign test (one-sided)", p, effect=share,
                             effect_name="share of seeds dropping", n=n,
                             confirmatory=step == 0 and metric == "f1" and etype != "spearman")
            if sel["value"].nunique() > 1 and sel["n_cells"].nunique() > 1:
                rho, p = spearman(sel["n_cells"], sel["value"])
                reg.register("scaling", f"{label} {metric} ({reference}) trends with cell count", "Spearman", p,
                             effect=rho, effect_name="Spearman rho", n=len(sel), confirmatory=False)
    return reg


def _draw(rng: np.random.Generator, members: np.ndarray, n: int) -> np.ndarray:
    return rng.choice(members, size=n, replace=False)


def composition_curve(expression: np.ndarray, states: np.ndarray, pairs: PairSet, *,
                      fractions: tuple[float, ...], n_seeds: int, seed: int = 0, min_cells: int = 10) -> pd.DataFrame:
    """Controlled-composition recovery of Spearman correlation (module doc). ``expression`` ``[cells, G]``,
    ``states`` ``[cells]`` (labels; states with fewer than ``min_cells`` cells are left out). Rows: condition,
    seed, n_cells, n_states, auroc, f1 (k = reference edges). Conditions that need two states are absent when fewer
    than two qualify."""
    names, sizes = np.unique(states, return_counts=True)
    kept = [(n, s) for n, s in sorted(zip(names, sizes), key=lambda t: -t[1]) if s >= min_cells]
    members = {n: np.nonzero(states == n)[0] for n, _ in kept}
    rows = []

    def score(condition, s, cells, n_states):
        corr = pairs.orient(spearman_by_stratum(expression[cells], np.zeros(cells.size, int), 1, pairs.columns))
        auroc, f1, _ = recovery(corr, pairs.labels, pairs.top_k, with_ranks=False)
        rows.append((condition, s, int(cells.size), n_states, float(auroc[0]), float(f1[0])))

    for s in range(n_seeds):
        rng = np.random.default_rng([seed, s, 29])
        if kept:
            big, n_big = kept[0]
            for n in sorted({max(min_cells, int(round(f * n_big))) for f in fractions}):
                score("single_state", s, _draw(rng, members[big], n), 1)
        if len(kept) >= 2:
            k, smallest = len(kept), kept[-1][1]
            for per in sorted({max(min_cells // k + 1, int(round(f * smallest))) for f in fractions}):
                score("fixed_mixture", s, np.concatenate([_draw(rng, members[n], per) for n, _ in kept]), k)
            for n_states in range(1, k + 1):
                chosen = rng.choice(k, size=n_states, replace=False)
                per = smallest // n_states
                score("heterogeneity", s, np.concatenate([_draw(rng, members[kept[c][0]], per) for c in chosen]),
                      n_states)
    return pd.DataFrame(rows, columns=["condition", "seed", "n_cells", "n_states", "auroc", "f1"])


def composition_tests(table: pd.DataFrame, *, reference: str) -> StatsRegistry:
    """Spearman trend of correlation AUROC against n (single state, fixed mixture) or the number of states
    (heterogeneity at fixed n), as the paper's registry section 13 (all three confirmatory)."""
    reg = StatsRegistry()
    for condition, x_col, hypothesis in (("single_state", "n_cells", "n changes AUROC within one state"),
                                         ("fixed_mixture", "n_cells", "n changes AUROC at fixed composition"),
                                         ("heterogeneity", "n_states", "more states at fixed n change AUROC")):
        sel = table[table["condition"] == condition]
        if sel[x_col].nunique() < 2 or sel["auroc"].nunique() < 2:
            continue
        rho, p = spearman(sel[x_col], sel["auroc"])
        reg.register("controlled_composition", f"{hypothesis} (Spearman edges, {reference})", "Spearman", p,
                     effect=rho, effect_name="Spearman rho", n=len(sel))
    return reg
