"""Cell-State Stratified Interpretability (paper sections 2.2 and 4.2, Supplementary Note 11).

Edge scores are computed within each cell-state stratum, then aggregated across strata per (TF, gene) pair:
``max``, ``mean``, ``range`` (max - min) and ``deviation`` (max over strata of |stratum score - pooled score|),
ignoring strata where the pair was never co-observed (attention) or a gene is constant (Spearman). Recovery of the
reference is scored exactly as the head ranking scores it (same evaluable universe, AUROC with average ranks, top-k
F1 with ``k`` = the number of reference edges in the universe unless set).

Cost design (flat in the number of slider positions): attention is accumulated once per *group* of cells
(:func:`analysis.interp.attention.extract_grouped_attention`): the ``F`` fine clusters of :mod:`analysis.scoring.strata`, whose
unions are every stratification, and ``M`` random groups of equal size, whose unions are random strata for the
null. One extraction pass and ``(F + M) x layers x heads x G^2 x 4`` bytes; a stratification then costs one
``[K, F] @ [F, sites x pairs]`` product. Per-stratum Spearman is recomputed from expression (cheap).

Nulls, each with an empirical p-value ``(1 + #{null >= observed}) / (1 + R)``:
- random strata: unions of random groups with the real strata's sizes (to the random-group granularity); the null
  for the CSSI - pooled improvement, drawn as a band;
- shuffled labels: the reference labels permuted over the candidate pairs (null for the CSSI AUROC itself);
- gene-permuted reference: the reference's genes relabelled by a random permutation of the panel (degrees kept);
  null for both the CSSI AUROC and its improvement over pooled.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import pandas as pd

from ..config import DIRECTIONS
from .edges import SubsetSpearman
from .ranking import (Universe, auroc_from_ranks, f1_from_hits, ranks_and_order, top_k_f1,
                      universe_from_labels)

AGGREGATIONS = ("max", "mean", "range", "deviation")
METRICS = ("auroc", "f1")


def aggregate(strata: np.ndarray, pooled: np.ndarray, how: str) -> np.ndarray:
    """Aggregate per-stratum scores ``[K, ...]`` into ``[...]`` (module doc); NaN where no stratum has a value."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")
    return aggregate_all(strata, pooled, (how,))[how]


def aggregate_all(strata: np.ndarray, pooled: np.ndarray, hows: tuple[str, ...] = AGGREGATIONS
                  ) -> dict[str, np.ndarray]:
    """:func:`aggregate` for each of ``hows``, sharing the masks and the maximum between them."""
    valid = ~np.isnan(strata)
    hi = np.fmax.reduce(strata, axis=0)            # NaN-ignoring: NaN only where no stratum has a value
    out = {}
    for how in hows:
        if how == "max":
            out[how] = hi
        elif how == "mean":
            n = valid.sum(axis=0)
            out[how] = np.where(n > 0, np.where(valid, strata, 0.0).sum(axis=0) / np.maximum(n, 1), np.nan)
        elif how == "range":
            out[how] = hi - np.fmin.reduce(strata, axis=0)
        else:
            out[how] = np.where(np.isnan(hi), np.nan, np.where(valid, np.abs(strata - pooled), -np.inf).max(axis=0))
    return out


def group_to_strata(values: np.ndarray, assignment: np.ndarray, n_strata: int) -> np.ndarray:
    """Sum ``values`` ``[n_groups, ...]`` into ``[n_strata, ...]``; ``assignment[g]`` = stratum of group g, -1 =
    group not used. One ``[K, groups] @ [groups, rest]`` product over the used block of rows, read in place when
    ``values`` is C-contiguous float64 (as :class:`CSSIData` holds it)."""
    used = np.nonzero(assignment >= 0)[0]
    block = slice(used.min(), used.max() + 1)   # groupings are numbered contiguously: skip the other grouping
    onehot = np.zeros((n_strata, block.stop - block.start))
    onehot[assignment[used], used - block.start] = 1.0
    rows = np.ascontiguousarray(values[block], dtype=np.float64)
    return (onehot @ rows.reshape(rows.shape[0], -1)).reshape((n_strata,) + rows.shape[1:])


def mean_scores(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``sums / counts`` with ``counts`` broadcast over the site axis (``sums`` ``[K, S, P]``, ``counts`` ``[K, P]``);
    NaN where never co-observed."""
    c = counts[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, sums / np.maximum(c, 1), np.nan)


def site_sums(group_sums: np.ndarray) -> np.ndarray:
    """``[groups, layers, heads, P]`` attention sums -> ``[groups, layers * heads + layers, P]``: every head, then
    each layer's head mean (the sum over heads / heads, additive like the heads)."""
    g, n_layers, n_heads = group_sums.shape[:3]
    heads = np.asarray(group_sums, dtype=np.float64).reshape(g, n_layers * n_heads, -1)
    return np.concatenate([heads, heads.reshape(g, n_layers, n_heads, -1).mean(axis=2)], axis=1)


def site_table(layers: tuple[int, ...], n_heads: int) -> pd.DataFrame:
    """The S sites scored by CSSI, in :func:`site_sums` order then the correlation edges (signed rho, the paper's, and
    |rho|; sign-matched needs an observed direction of change, which a reference pair has not): edge_type, layer,
    head, label."""
    rows = [("attention", layer, h, f"L{layer}H{h}") for layer in layers for h in range(n_heads)]
    rows += [("attention_layer_mean", layer, -1, f"L{layer} mean") for layer in layers]
    rows += [("spearman", -1, -1, "Spearman"), ("spearman_absolute", -1, -1, "|Spearman|")]
    return pd.DataFrame(rows, columns=["edge_type", "layer", "head", "label"])


@dataclass(frozen=True)
class PairSet:
    """Candidate (TF, gene) pairs of one reference and direction over a ``G``-gene panel. ``columns``: flat
    ``[G * G]`` indices to read (``[N]``, or ``[2N]`` forward then backward for ``symmetric``); ``labels``: ``[N]``;
    ``tf``/``gene``: ``[N]`` panel indices."""

    columns: np.ndarray
    labels: np.ndarray
    tf: np.ndarray
    gene: np.ndarray
    direction: str
    n_genes: int

    @classmethod
    def from_universe(cls, universe: Universe, direction: str, n_genes: int) -> "PairSet":
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        t, g = np.nonzero(universe.pair_mask)
        tf = universe.tf_rows[t]
        forward, backward = tf * n_genes + g, g * n_genes + tf
        cols = {"tf_to_target": forward, "target_to_tf": backward,
                "symmetric": np.concatenate([forward, backward])}[direction]
        return cls(cols, universe.labels[t, g], tf, g, direction, n_genes)

    def orient(self, values: np.ndarray) -> np.ndarray:
        """``[..., len(columns)]`` -> ``[..., N]`` pair scores (symmetric: mean of both directions)."""
        if self.direction != "symmetric":
            return values
        n = self.labels.size
        return (values[..., :n] + values[..., n:]) / 2

    @property
    def top_k(self) -> int:
        return int(self.labels.sum())


def spearman_by_stratum(x: np.ndarray | SubsetSpearman, labels: np.ndarray, n_strata: int, columns: np.ndarray,
                        min_cells: int = 3) -> np.ndarray:
    """``[n_strata, len(columns)]`` Spearman correlation within each stratum of cells (``labels`` ``[cells]``) at
    the flat pair ``columns``; NaN for strata with fewer than ``min_cells`` cells and for constant genes. ``x``: the
    expression ``[cells, G]``, or a :class:`~analysis.scoring.edges.SubsetSpearman` of it (reused across calls)."""
    ranker = x if isinstance(x, SubsetSpearman) else SubsetSpearman(x)
    out = np.full((n_strata, columns.size), np.nan)
    for s in range(n_strata):
        member = labels == s
        if member.sum() >= min_cells:
            out[s] = ranker.pairs(member, columns)
    return out


def recovery(scores: np.ndarray, labels: np.ndarray, k: int, *, with_ranks: bool = True
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """AUROC and top-k F1 per row of ``scores`` ``[S, N]`` (NaN scored as 0, as the head ranking does), and the
    average ranks ``[S, N]`` for permutation nulls. ``with_ranks=False`` (null draws, which need no ranks) gets the
    same two numbers from one unstable sort per row: average-rank AUROC from where the positives fall in the sorted
    scores, and top-k with ties broken by position, as :func:`~analysis.scoring.ranking.top_k_f1` breaks them."""
    flat = np.nan_to_num(scores, nan=0.0)
    if with_ranks:
        ranks, order = ranks_and_order(flat)
        return auroc_from_ranks(ranks, labels), top_k_f1(flat, labels, k, order)[0], ranks
    ordered = np.sort(flat, axis=1)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    rank_sum = np.array([(np.searchsorted(row, pos, "left") + np.searchsorted(row, pos, "right") + 1).sum() / 2
                         for row, pos in zip(ordered, flat[:, labels])])
    auroc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    threshold = ordered[:, flat.shape[1] - k][:, None]                      # the k-th highest score
    above = flat > threshold
    tied = flat == threshold
    take = tied & (np.cumsum(tied, axis=1) <= (k - above.sum(axis=1))[:, None])   # first tied positions fill k
    hits = ((above | take) & labels).sum(axis=1)
    return auroc, f1_from_hits(hits, k, n_pos), None


@dataclass(frozen=True)
class CSSIData:
    """Everything a stratification is scored from, at the candidate pair columns only.

    ``group_sums``: ``[F + M, S_att, C]`` attention sums per group and site (:func:`site_sums`); ``group_counts``:
    ``[F + M, C]``, both C-contiguous float64 so that every stratification is one matrix product read in place; ``expression``: ``[cells, G]`` log1p CP10k of the panel genes; ``fine``: ``[cells]`` fine
    cluster (0..F-1); ``random_group``: ``[cells]`` random group (F..F+M-1), None for data that holds no random groups
    (:class:`LevelSums`); ``sites``: :func:`site_table`; ``top_k``: the F1 cut-off; ``pooled_scores``: :attr:`pooled`
    when it was computed already (None: computed from the groups)."""

    group_sums: np.ndarray
    group_counts: np.ndarray
    expression: np.ndarray
    fine: np.ndarray
    random_group: np.ndarray | None
    pairs: PairSet
    sites: pd.DataFrame
    top_k: int
    spearman: SubsetSpearman | None = None
    pooled_scores: np.ndarray | None = None

    @property
    def n_fine(self) -> int:
        return int(self.fine.max()) + 1

    @cached_property
    def ranker(self) -> SubsetSpearman:
        """Per-stratum Spearman over :attr:`expression`: ``spearman`` when the source shared one, else built once."""
        return self.spearman or SubsetSpearman(self.expression)

    @cached_property
    def pooled(self) -> np.ndarray:
        """``[S, N]`` pair scores over all cells (the fine clusters partition them)."""
        if self.pooled_scores is not None:
            return self.pooled_scores
        fine = (np.arange(self.group_counts.shape[0]) < self.n_fine).astype(float)
        return self.union_scores(fine, np.arange(self.fine.size))

    def union_scores(self, weights: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """``[S, N]`` pair scores of every site over a weighted union of groups: ``weights`` ``[F + M]`` is how many
        times each group's cells are taken (0 = left out; a bootstrap draw repeats groups), ``cells`` the same cells
        as indices into ``expression`` (repeated as often), from which Spearman is computed."""
        w = np.asarray(weights, dtype=np.float64)
        sums = (w @ self.group_sums.reshape(w.size, -1)).reshape(self.group_sums.shape[1:])     # [S_att, C]
        att = mean_scores(sums[None], (w @ self.group_counts)[None])[0]
        cells = np.asarray(cells)
        corr = (self.ranker.pairs(cells, self.pairs.columns) if cells.size >= 3
                else np.full(self.pairs.columns.size, np.nan))[None]
        return self.pairs.orient(np.concatenate([att, corr, np.abs(corr)], axis=0))

    @cached_property
    def pooled_recovery(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:func:`recovery` of :attr:`pooled` (no ranks: the label-shuffle null ranks the aggregated scores)."""
        return recovery(self.pooled, self.pairs.labels, self.top_k, with_ranks=False)

    def stratum_scores(self, group_assignment: np.ndarray, cell_labels: np.ndarray, n_strata: int) -> np.ndarray:
        """Per-stratum ``[K, S, N]`` pair scores of every site for one stratification (``group_assignment``:
        stratum of each group or -1; ``cell_labels``: stratum of each cell, for Spearman)."""
        att = mean_scores(group_to_strata(self.group_sums, group_assignment, n_strata),
                          group_to_strata(self.group_counts, group_assignment, n_strata))
        corr = spearman_by_stratum(self.ranker, cell_labels, n_strata, self.pairs.columns)
        return self.pairs.orient(np.concatenate([att, corr[:, None, :], np.abs(corr)[:, None, :]], axis=1))

    def score(self, group_assignment: np.ndarray, cell_labels: np.ndarray, n_strata: int, *,
              with_ranks: bool = True) -> dict:
        """``{"pooled" | aggregation: (auroc [S], f1 [S], ranks [S, N] or None)}`` for one stratification."""
        strata = self.stratum_scores(group_assignment, cell_labels, n_strata)
        y = self.pairs.labels
        out = {"pooled": self.pooled_recovery}
        for how, scores in aggregate_all(strata, self.pooled).items():
            out[how] = recovery(scores, y, self.top_k, with_ranks=with_ranks)
        return out


@dataclass(frozen=True)
class CSSISource:
    """Full-resolution CSSI inputs of a run: ``group_sums`` ``[F + M, layers, heads, G, G]`` (memory-mapped is
    fine), ``group_counts`` ``[F + M, G, G]``, ``expression`` ``[cells, G]``, ``fine`` and ``random_group``
    ``[cells]``, ``layers`` kept."""

    group_sums: np.ndarray
    group_counts: np.ndarray
    expression: np.ndarray
    fine: np.ndarray
    random_group: np.ndarray
    layers: tuple[int, ...]
    spearman: SubsetSpearman | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.spearman is None:   # one ranker for every pair set and copy sliced from this source
            object.__setattr__(self, "spearman", SubsetSpearman(self.expression))

    @property
    def sites(self) -> pd.DataFrame:
        return site_table(self.layers, self.group_sums.shape[2])

    def level_sums(self, assignment: np.ndarray, n_strata: int, block_bytes: int = 256 * 2 ** 20) -> "LevelSums":
        """:class:`LevelSums` of one stratification (``assignment``: ``[F]`` stratum of each fine cluster): the fine
        clusters' sums are read once, ``block_bytes`` of float64 site sums at a time, whatever the number of pair
        sets later scored."""
        f, n_att = assignment.size, len(self.sites) - 2
        n_groups, n_layers, n_heads = self.group_sums.shape[:3]
        flat_sums = self.group_sums.reshape(n_groups, n_layers, n_heads, -1)
        flat_counts = self.group_counts.reshape(n_groups, -1)
        n_pairs = flat_counts.shape[1]
        sums, counts = np.empty((n_strata, n_att, n_pairs)), np.empty((n_strata, n_pairs))
        step = max(1, block_bytes // (8 * f * (n_att + n_layers * n_heads)))
        for start in range(0, n_pairs, step):
            cols = slice(start, start + step)
            sums[:, :, cols] = group_to_strata(site_sums(flat_sums[:f, :, :, cols]), assignment, n_strata)
            counts[:, cols] = group_to_strata(np.asarray(flat_counts[:f, cols], dtype=np.float64), assignment,
                                              n_strata)
        return LevelSums(sums, counts, self.expression, assignment[self.fine], self.sites, self.spearman)

    def data(self, pairs: PairSet, top_k: int = 0) -> CSSIData:
        """:class:`CSSIData` at ``pairs`` (``top_k`` 0 = the number of reference edges)."""
        sums = np.asarray(self.group_sums)
        g = sums.shape[0]
        flat = sums.reshape(g, sums.shape[1], sums.shape[2], -1)[..., pairs.columns]
        counts = np.asarray(self.group_counts).reshape(g, -1)[:, pairs.columns]
        return CSSIData(np.ascontiguousarray(site_sums(flat)), np.ascontiguousarray(counts, dtype=np.float64),
                        self.expression, self.fine, self.random_group, pairs, self.sites,
                        top_k or pairs.top_k, self.spearman)


@dataclass(frozen=True)
class LevelSums:
    """One stratification's attention summed per stratum over every gene pair, to be scored at many pair sets (the
    gene-permuted reference null: each draw is a new set of pairs, the strata stay): ``sums`` ``[K, S_att, G * G]``
    (sites in :func:`site_sums` order) and ``counts`` ``[K, G * G]``, float64; ``cell_labels`` ``[cells]`` stratum
    of each cell. Its :class:`CSSIData` holds one group per stratum (score it with ``np.arange(K)`` as the group
    assignment), so a draw reads ``K`` rows at its pairs instead of every fine cluster's, and its pooled scores are
    read from :attr:`pooled_columns`, computed once."""

    sums: np.ndarray
    counts: np.ndarray
    expression: np.ndarray
    cell_labels: np.ndarray
    sites: pd.DataFrame
    spearman: SubsetSpearman | None = None

    @cached_property
    def pooled_columns(self) -> np.ndarray:
        """``[S, G * G]`` every pair's score over all cells, before orientation: attention sums / counts over the
        strata, Spearman and |Spearman| over every cell."""
        ones = np.ones(self.sums.shape[0])
        att = mean_scores((ones @ self.sums.reshape(ones.size, -1)).reshape(1, *self.sums.shape[1:]),
                          (ones @ self.counts)[None])[0]
        ranker = self.spearman or SubsetSpearman(self.expression)
        corr = ranker.pairs(np.arange(self.cell_labels.size), np.arange(self.counts.shape[1]))[None]
        return np.concatenate([att, corr, np.abs(corr)], axis=0)

    def data(self, pairs: PairSet, top_k: int = 0) -> CSSIData:
        return CSSIData(np.ascontiguousarray(self.sums[:, :, pairs.columns]),
                        np.ascontiguousarray(self.counts[:, pairs.columns]), self.expression, self.cell_labels, None,
                        pairs, self.sites, top_k or pairs.top_k, self.spearman,
                        pooled_scores=pairs.orient(self.pooled_columns[:, pairs.columns]))


def permuted_pairs(labels_all: np.ndarray, observed: np.ndarray, direction: str, rng: np.random.Generator
                   ) -> PairSet:
    """Candidate pairs of a gene-permuted reference: every gene's identity relabelled by one random permutation of
    the panel (edge count, in- and out-degrees kept)."""
    perm = rng.permutation(labels_all.shape[0])
    return PairSet.from_universe(universe_from_labels(labels_all[np.ix_(perm, perm)], observed), direction,
                                 labels_all.shape[0])


def random_assignment(group_sizes: np.ndarray, target_sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random groups -> strata so stratum sizes approach ``target_sizes``: groups in random order, each to the
    stratum furthest below its target."""
    filled = np.zeros(target_sizes.size)
    out = np.empty(group_sizes.size, dtype=np.int64)
    for g in rng.permutation(group_sizes.size):
        s = int(np.argmax(target_sizes - filled))
        out[g] = s
        filled[s] += group_sizes[g]
    return out


def _empirical_p(null: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """``(1 + #{null >= observed}) / (1 + R)`` along the last axis of ``null``."""
    return (1 + (null >= observed[..., None] - 1e-12).sum(axis=-1)) / (1 + null.shape[-1])


def evaluate_level(data: CSSIData, assignment: np.ndarray, n_strata: int, *, n_null: int, seed: int,
                   gene_permuted: Callable[[np.random.Generator], "CSSIData"] | None = None, n_gene_null: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score one stratification (``assignment``: ``[F]`` stratum of each fine cluster) with its three nulls.

    Returns the curve rows (one per site x aggregation x metric: value, pooled, delta, null band of the random
    strata, p-values; schema ``cssi_curve``) and the raw random-strata null draws (schema ``cssi_null``).
    ``n_null`` random strata and label shuffles; ``gene_permuted(rng)`` returns the data at the pairs of a
    gene-permuted reference with one group per stratum of ``assignment`` (:meth:`LevelSums.data`), drawn
    ``n_gene_null`` times (None or 0 skips that null).
    """
    rng = np.random.default_rng([seed, n_strata])
    n_fine = data.n_fine
    n_groups = data.group_sums.shape[0]
    fine_assign = np.concatenate([assignment, -np.ones(n_groups - n_fine, dtype=np.int64)])
    cell_labels = assignment[data.fine]
    observed = data.score(fine_assign, cell_labels, n_strata)
    target = np.bincount(cell_labels, minlength=n_strata).astype(float)
    random_sizes = np.bincount(data.random_group - n_fine, minlength=n_groups - n_fine)
    if gene_permuted is None:
        n_gene_null = 0
    steps = n_null + n_gene_null
    null = {how: np.zeros((2, len(data.sites), n_null)) for how in AGGREGATIONS}   # [metric, S, R]
    for r in range(n_null):
        rand = random_assignment(random_sizes, target, rng)
        scored = data.score(np.concatenate([-np.ones(n_fine, dtype=np.int64), rand]),
                            rand[data.random_group - n_fine], n_strata, with_ranks=False)
        for how in AGGREGATIONS:
            null[how][0, :, r], null[how][1, :, r] = scored[how][0], scored[how][1]
        if progress:
            progress(r + 1, steps)
    y = data.pairs.labels
    shuffles = np.stack([rng.permutation(y) for _ in range(n_null)])                 # [R, N]
    perm_auroc, perm_delta = {}, {}
    if n_gene_null:
        draws = []
        for r in range(n_gene_null):
            permuted = gene_permuted(rng)
            draws.append(permuted.score(np.arange(n_strata), cell_labels, n_strata, with_ranks=False))
            if progress:
                progress(n_null + r + 1, steps)
        for how in AGGREGATIONS:
            perm_auroc[how] = np.stack([d[how][0] for d in draws], axis=1)            # [S, R]
            perm_delta[how] = np.stack([d[how][0] - d["pooled"][0] for d in draws], axis=1)
    rows = []
    sites = data.sites
    pooled_auroc, pooled_f1 = observed["pooled"][0], observed["pooled"][1]
    for how in AGGREGATIONS:
        auroc, f1, ranks = observed[how]
        shuffle_null = np.stack([auroc_from_ranks(ranks, s) for s in shuffles], axis=1)  # [S, R]
        for m, (metric, value, pooled) in enumerate((("auroc", auroc, pooled_auroc), ("f1", f1, pooled_f1))):
            band = null[how][m]
            p_random = _empirical_p(band - pooled[:, None], value - pooled)
            p_shuffle = _empirical_p(shuffle_null, auroc) if metric == "auroc" else np.full(len(sites), np.nan)
            if n_gene_null and metric == "auroc":
                p_gene, p_gene_delta = _empirical_p(perm_auroc[how], auroc), _empirical_p(perm_delta[how],
                                                                                           auroc - pooled)
                gene_mean = perm_auroc[how].mean(axis=1)
            else:
                p_gene = p_gene_delta = gene_mean = np.full(len(sites), np.nan)
            for s in range(len(sites)):
                rows.append((n_strata, int(np.unique(assignment).size), s, how, metric, float(value[s]),
                             float(pooled[s]), float(value[s] - pooled[s]), float(band[s].mean()),
                             float(np.quantile(band[s], 0.05)), float(np.quantile(band[s], 0.95)),
                             float(p_random[s]), float(p_shuffle[s]), float(gene_mean[s]), float(p_gene[s]),
                             float(p_gene_delta[s]), n_null))
    curve = pd.DataFrame(rows, columns=["n_strata", "n_found", "site", "aggregation", "metric", "value", "pooled",
                                        "delta", "null_mean", "null_low", "null_high", "p_random_strata",
                                        "p_label_shuffle", "gene_permuted_mean", "p_gene_permuted",
                                        "p_gene_permuted_delta", "n_null"])
    curve = curve.merge(sites.reset_index(names="site"), on="site")
    draws = [(n_strata, s, how, metric, r, float(null[how][m, s, r]))
             for how in AGGREGATIONS for m, metric in enumerate(METRICS)
             for s in range(len(sites)) for r in range(n_null)]
    null_table = pd.DataFrame(draws, columns=["n_strata", "site", "aggregation", "metric", "draw", "value"])
    return curve, null_table
