"""Cell-State Stratified Interpretability (paper sections 2.2 and 4.2, Supplementary Note 11).

Edge scores are computed within each cell-state stratum, then aggregated across strata per (TF, gene) pair:
``max``, ``mean``, ``range`` (max - min) and ``deviation`` (max over strata of |stratum score - pooled score|),
ignoring strata where the pair was never co-observed (attention) or a gene is constant (Spearman). Recovery of the
reference is scored exactly as the head ranking scores it (same evaluable universe, AUROC with average ranks, top-k
F1 with ``k`` = the number of reference edges in the universe unless set).

Cost design (flat in the number of slider positions): attention is accumulated once per *group* of cells
(:func:`analysis.interp.attention.extract_grouped_attention`): the ``F`` fine clusters of :mod:`analysis.scoring.strata`, whose
unions are every stratification, and ``M`` random groups of equal size, whose unions are random strata for the
null. One extraction pass; per group, each kept layer's head mean over every pair and each head's rows at the
source genes (every gene when that fits, else the reference TFs; :class:`analysis.io.stores.GroupedAttention`). A
stratification then costs one ``[K, F] @ [F, sites x pairs]`` product at the candidate pairs, a block of sites at a
time. Per-stratum Spearman is recomputed from expression (cheap).

Nulls, each with an empirical p-value ``(1 + #{null >= observed}) / (1 + R)``:
- random strata: unions of random groups with the real strata's sizes (to the random-group granularity); the null
  for the CSSI - pooled improvement, drawn as a band;
- shuffled labels: the reference labels permuted over the candidate pairs (null for the CSSI AUROC itself);
- gene-permuted reference: the reference's genes relabelled by a random permutation of the panel (degrees kept);
  null for both the CSSI AUROC and its improvement over pooled. A permuted reference's TFs are any genes, so it is
  scored where every pair is held: each layer's head mean and the correlations always, the heads only when the
  store kept every gene's rows (the paper registers it for the read-out layer's head mean).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import pandas as pd

from ..config import DIRECTIONS
from ..io.stores import GroupedAttention
from .edges import SubsetSpearman, mean_scores
from .ranking import (Universe, auroc_from_ranks, auroc_of_positives, f1_from_hits, ranks_and_order,
                      shuffled_positives, top_k_f1, universe_from_labels)

AGGREGATIONS = ("max", "mean", "range", "deviation")
SITE_BLOCK_BYTES = 1 << 30   # group sums at the candidate pairs held at once (CSSISource.site_blocks)
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
    """Sum ``values`` ``[n_groups, ...]`` into ``[n_strata, ...]`` float64; ``assignment[g]`` = stratum of group g, -1 =
    group not used. One ``[K, groups] @ [groups, rest]`` product over the used block of rows, in the values' own
    precision when they are float32 (sums of a few dozen float32 group sums: 1e-6 relative) and read in place when
    that block is C-contiguous. A ``[groups, sites, C]`` view of some sites (a scoring block) is read in place too,
    one site at a time: each site's ``[groups, C]`` rows have unit inner stride, which the matrix product takes
    as it is (copying the block cost more than the product)."""
    used = np.nonzero(assignment >= 0)[0]
    block = slice(used.min(), used.max() + 1)   # groupings are numbered contiguously: skip the other grouping
    dtype = np.float32 if values.dtype == np.float32 else np.float64
    onehot = np.zeros((n_strata, block.stop - block.start), dtype=dtype)
    onehot[assignment[used], used - block.start] = 1.0
    rows = values[block]
    if rows.ndim == 3 and rows.dtype == dtype and not rows.flags.c_contiguous and rows.strides[-1] == rows.itemsize:
        out = np.empty((n_strata,) + rows.shape[1:], dtype=np.float64)
        for site in range(rows.shape[1]):
            out[:, site] = onehot @ rows[:, site]
        return out
    rows = np.ascontiguousarray(rows, dtype=dtype)
    return (onehot @ rows.reshape(rows.shape[0], -1)).reshape((n_strata,) + rows.shape[1:]).astype(np.float64)


def correlation_rows(corr: np.ndarray, kinds) -> np.ndarray:
    """``[..., len(kinds), C]`` correlation-site scores from the Spearman ``corr`` ``[..., C]``: signed for
    ``spearman``, absolute for ``spearman_absolute`` (the non-attention rows of :func:`site_table`)."""
    rows = [corr if kind == "spearman" else np.abs(corr) for kind in kinds]
    return np.stack(rows, axis=-2) if rows else np.empty(corr.shape[:-1] + (0, corr.shape[-1]))


def site_table(layers: tuple[int, ...], n_heads: int) -> pd.DataFrame:
    """The S sites scored by CSSI: every head of the kept layers, then each layer's head mean, then the correlation edges (signed rho, the paper's, and
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

    ``group_sums``: ``[F + M, S_att, C]`` float32 attention sums per group and attention site
    (:meth:`CSSISource.pair_sums`); ``group_counts``: ``[F + M, C]`` float64, both C-contiguous so that every
    stratification is one matrix product read in place; ``expression``: ``[cells, G]`` log1p CP10k of the panel
    genes; ``fine``: ``[cells]`` fine cluster (0..F-1); ``random_group``: ``[cells]`` random group (F..F+M-1), None for
    data that holds no random groups (:class:`LevelSums`); ``sites``: the rows of :func:`site_table` held (attention
    sites, then the two correlation sites; their index is the site number); ``top_k``: the F1 cut-off;
    ``pooled_scores``: :attr:`pooled` when it was computed already (None: computed from the groups). A
    stratification is scored a block of sites at a time (``block_bytes`` of ``[K, sites, N]`` scores), so its memory
    does not grow with the number of heads."""

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
    block_bytes: int = 128 * 2 ** 20

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
        sums = (w.astype(np.float32) @ self.group_sums.reshape(w.size, -1)).reshape(self.group_sums.shape[1:])
        att = mean_scores(sums, (w @ self.group_counts)[None])
        cells, kinds = np.asarray(cells), self.correlation_kinds
        corr = np.full(self.pairs.columns.size, np.nan)
        if len(kinds) and cells.size >= 3:
            corr = self.ranker.pairs(cells, self.pairs.columns)
        return self.pairs.orient(np.concatenate([att, correlation_rows(corr, kinds)], axis=0))

    @property
    def correlation_kinds(self) -> list[str]:
        """The edge types of the correlation sites held (after the attention sites)."""
        return list(self.sites["edge_type"].iloc[self.group_sums.shape[1]:])

    @cached_property
    def pooled_recovery(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:func:`recovery` of :attr:`pooled` (no ranks: the label-shuffle null ranks the aggregated scores)."""
        return recovery(self.pooled, self.pairs.labels, self.top_k, with_ranks=False)

    def score_blocks(self, n_strata: int) -> list[slice]:
        """The blocks of sites a stratification of ``n_strata`` is scored in (class doc)."""
        n_sites, per_site = len(self.sites), 8 * n_strata * max(self.pairs.columns.size, 1) * 4   # a few temporaries
        step = max(1, self.block_bytes // per_site)
        return [slice(start, min(start + step, n_sites)) for start in range(0, n_sites, step)]

    def stratum_scores(self, group_assignment: np.ndarray, cell_labels: np.ndarray, n_strata: int,
                       sites: slice = slice(None), *, counts: np.ndarray | None = None,
                       corr: np.ndarray | None = None) -> np.ndarray:
        """Per-stratum ``[K, s, N]`` pair scores of the ``sites`` block for one stratification (``group_assignment``:
        stratum of each group or -1; ``cell_labels``: stratum of each cell, for Spearman). ``counts`` ``[K, C]`` and
        ``corr`` ``[K, C]``, the stratification's pair counts and Spearman, are computed when not given."""
        n_att = self.group_sums.shape[1]
        start, stop, _ = sites.indices(n_att + 2)
        if counts is None:
            counts = group_to_strata(self.group_counts, group_assignment, n_strata)
        parts = []
        if start < n_att:
            parts.append(mean_scores(group_to_strata(self.group_sums[:, start:min(stop, n_att)], group_assignment,
                                                     n_strata), counts[:, None, :]))
        if stop > n_att:
            if corr is None:
                corr = spearman_by_stratum(self.ranker, cell_labels, n_strata, self.pairs.columns)
            parts.append(correlation_rows(corr, self.correlation_kinds)[:, max(start - n_att, 0):stop - n_att])
        return self.pairs.orient(np.concatenate(parts, axis=1))

    def score(self, group_assignment: np.ndarray, cell_labels: np.ndarray, n_strata: int, *,
              with_ranks: bool = True) -> dict:
        """``{"pooled" | aggregation: (auroc [S], f1 [S], ranks [S, N] or None)}`` for one stratification."""
        counts = group_to_strata(self.group_counts, group_assignment, n_strata)
        corr = (spearman_by_stratum(self.ranker, cell_labels, n_strata, self.pairs.columns)
                if self.correlation_kinds else None)
        y = self.pairs.labels
        parts: dict[str, list] = {how: [] for how in AGGREGATIONS}
        for block in self.score_blocks(n_strata):
            strata = self.stratum_scores(group_assignment, cell_labels, n_strata, block, counts=counts, corr=corr)
            for how, scores in aggregate_all(strata, self.pooled[block]).items():
                parts[how].append(recovery(scores, y, self.top_k, with_ranks=with_ranks))
        out = {"pooled": self.pooled_recovery}
        for how, pieces in parts.items():
            auroc, f1, ranks = zip(*pieces)
            out[how] = (np.concatenate(auroc), np.concatenate(f1), np.concatenate(ranks) if with_ranks else None)
        return out


@dataclass(frozen=True)
class CSSISource:
    """Full-resolution CSSI inputs of a run: the grouped attention (:class:`analysis.io.stores.GroupedAttention`,
    memory-mapped is fine), ``expression`` ``[cells, G]``, ``fine`` and ``random_group`` ``[cells]``.

    Per-head sums exist at the store's source rows (every gene when they fit, else the reference TFs), so a head
    site is read at pairs whose TF is a source (and, for the target -> TF direction, from the source columns); each
    layer's head mean exists at every pair."""

    grouped: GroupedAttention
    expression: np.ndarray
    fine: np.ndarray
    random_group: np.ndarray
    spearman: SubsetSpearman | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.spearman is None:   # one ranker for every pair set and copy sliced from this source
            object.__setattr__(self, "spearman", SubsetSpearman(self.expression))

    @property
    def layers(self) -> tuple[int, ...]:
        return self.grouped.layers

    @property
    def group_counts(self) -> np.ndarray:
        """``[F + M, G, G]`` co-occurrence counts per group."""
        return self.grouped.counts

    @property
    def sites(self) -> pd.DataFrame:
        return site_table(self.layers, self.grouped.head_rows.shape[2])

    @cached_property
    def _source_of(self) -> np.ndarray:
        """``[G]`` source index of each panel gene (-1: no per-head rows)."""
        out = np.full(len(self.grouped.panel), -1, dtype=np.int64)
        out[self.grouped.source_rows] = np.arange(self.grouped.source_rows.size)
        return out

    def _head_pairs(self, query: np.ndarray, key: np.ndarray, groups: slice, layer: int, head: int) -> np.ndarray:
        """``[groups, N]`` float32 sums of one head (``layer``: index among the kept layers) at the (query, key)
        panel pairs: from the source rows where the query is a source, else from the source columns where the key
        is one."""
        store = self.grouped
        as_row, as_col = self._source_of[query], self._source_of[key]
        rows = as_row >= 0
        missing = ~rows & ((as_col < 0) | (store.head_cols is None))
        if missing.any():
            raise ValueError(f"{int(missing.sum())} pairs have neither gene among the {store.source_rows.size} genes "
                             "whose per-head attention CSSI kept (the reference TFs); score them at layer means, or "
                             "rerun with cssi.directions including target_to_tf to keep the TFs' columns")
        if rows.all():
            return np.asarray(store.head_rows[groups, layer, head][:, as_row, key], dtype=np.float32)
        out = np.empty((len(range(*groups.indices(store.head_rows.shape[0]))), query.size), dtype=np.float32)
        out[:, rows] = store.head_rows[groups, layer, head][:, as_row[rows], key[rows]]
        out[:, ~rows] = store.head_cols[groups, layer, head][:, as_col[~rows], query[~rows]]
        return out

    def pair_sums(self, columns: np.ndarray, sites: pd.DataFrame, groups: slice = slice(None)) -> np.ndarray:
        """``[groups, S_att, N]`` float32 attention sums of the attention ``sites`` (rows of :attr:`sites`) at the flat
        ``[G * G]`` pair ``columns``, filled one site at a time (no temporary of the whole)."""
        sites = sites[sites["edge_type"].str.startswith("attention")]
        n_groups = len(range(*groups.indices(self.grouped.counts.shape[0])))
        out = np.empty((n_groups, len(sites), np.asarray(columns).size), dtype=np.float32)
        for i, (_, site) in enumerate(sites.iterrows()):
            out[:, i] = self.site_sums(site, columns, groups)
        return out

    def site_sums(self, site: pd.Series, columns: np.ndarray, groups: slice = slice(None)) -> np.ndarray:
        """``[groups, N]`` sums of one attention site (a row of :attr:`sites`) at the flat pair ``columns``."""
        query, key = np.divmod(np.asarray(columns), len(self.grouped.panel))
        layer = self.layers.index(int(site["layer"]))
        if site["edge_type"] == "attention_layer_mean":
            return np.asarray(self.grouped.layer_sums[groups, layer][:, query, key])
        return self._head_pairs(query, key, groups, layer, int(site["head"]))

    @property
    def permutable_sites(self) -> np.ndarray:
        """Numbers of the sites held over every gene pair, which a gene-permuted reference can be scored at: each
        layer's head mean and the correlations, and the heads when the store keeps every gene's rows."""
        n_layers, n_heads = len(self.layers), self.grouped.head_rows.shape[2]
        first = 0 if self.grouped.full_rows else n_layers * n_heads
        return np.arange(first, n_layers * (n_heads + 1) + 2)

    def level_sums(self, assignment: np.ndarray, n_strata: int, block_bytes: int = 256 * 2 ** 20) -> "LevelSums":
        """:class:`LevelSums` of one stratification (``assignment``: ``[F]`` stratum of each fine cluster) over every
        gene pair: each layer's head mean, and every head when the store keeps every gene's rows (else the heads'
        gene-permuted null is not computed). The fine clusters' sums are read once, ``block_bytes`` of float64 at a
        time, whatever the number of pair sets later scored."""
        store, f = self.grouped, assignment.size
        n_layers, g = len(self.layers), len(store.panel)
        n_heads = store.head_rows.shape[2]
        parts = [store.layer_sums[:f].reshape(f, n_layers, g * g)]
        if store.full_rows:
            parts.insert(0, store.head_rows[:f].reshape(f, n_layers * n_heads, g * g))
        kept = self.permutable_sites[:-2]
        counts = store.counts[:f].reshape(f, g * g)
        sums = np.empty((n_strata, kept.size, g * g), dtype=np.float32)
        strata_counts = np.empty((n_strata, g * g))
        step = max(1, block_bytes // (8 * (f + n_strata) * (kept.size + 1)))
        for start in range(0, g * g, step):
            cols = slice(start, start + step)
            block = np.concatenate([np.asarray(part[:, :, cols], dtype=np.float32) for part in parts], axis=1)
            sums[:, :, cols] = group_to_strata(block, assignment, n_strata)
            strata_counts[:, cols] = group_to_strata(np.asarray(counts[:, cols], dtype=np.float64), assignment,
                                                     n_strata)
        sites = self.sites.iloc[self.permutable_sites]
        store.release_pages()
        return LevelSums(sums, strata_counts, self.expression, assignment[self.fine], sites, self.spearman)

    def data(self, pairs: PairSet, top_k: int = 0, sites: pd.DataFrame | None = None) -> CSSIData:
        """:class:`CSSIData` at ``pairs`` (``top_k`` 0 = the number of reference edges) for ``sites`` (rows of
        :attr:`sites` in their order, index kept; default every site)."""
        sites = self.sites if sites is None else sites
        counts = np.asarray(self.grouped.counts).reshape(self.grouped.counts.shape[0], -1)[:, pairs.columns]
        sums = self.pair_sums(pairs.columns, sites)
        self.grouped.release_pages()
        return CSSIData(sums, np.ascontiguousarray(counts, dtype=np.float64), self.expression, self.fine,
                        self.random_group, pairs, sites, top_k or pairs.top_k, self.spearman)

    def site_blocks(self, pairs: PairSet, block_bytes: int = SITE_BLOCK_BYTES) -> list[pd.DataFrame]:
        """:attr:`sites` in blocks whose group sums at ``pairs`` (``groups x sites x N`` float32) hold at most
        ``block_bytes`` (one site at least); the correlation sites, which hold no sums, close the last block. Scoring
        block by block bounds CSSI's memory at paper scale, where every head's sums at the candidate pairs are as
        large as the store's rows."""
        sites = self.sites
        attention = np.nonzero(sites["edge_type"].str.startswith("attention").to_numpy())[0]
        per_site = self.grouped.counts.shape[0] * max(pairs.columns.size, 1) * 4
        step = max(1, block_bytes // per_site)
        blocks = [attention[i:i + step] for i in range(0, attention.size, step)] or [attention]
        blocks[-1] = np.concatenate([blocks[-1], np.setdiff1d(np.arange(len(sites)), attention)])
        return [sites.iloc[b] for b in blocks]


@dataclass(frozen=True)
class LevelSums:
    """One stratification's attention summed per stratum over every gene pair, to be scored at many pair sets (the
    gene-permuted reference null: each draw is a new set of pairs, the strata stay): ``sums`` ``[K, S_att, G * G]``
    float32 at the attention sites of ``sites`` (a subset of :func:`site_table`'s rows, keeping their index) and
    ``counts`` ``[K, G * G]`` float64; ``cell_labels`` ``[cells]`` stratum
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
        att = mean_scores(self.sums.sum(axis=0, dtype=np.float64), self.counts.sum(axis=0)[None])
        ranker = self.spearman or SubsetSpearman(self.expression)
        corr = ranker.pairs(np.arange(self.cell_labels.size), np.arange(self.counts.shape[1]))[None]
        return np.concatenate([att, corr, np.abs(corr)], axis=0)

    def data(self, pairs: PairSet, top_k: int = 0, sites: pd.Index | None = None) -> CSSIData:
        """:class:`CSSIData` at ``pairs`` for the sites held that are among the site numbers ``sites`` (default
        every site held)."""
        held = np.ones(len(self.sites), dtype=bool) if sites is None else self.sites.index.isin(sites)
        n_att = self.sums.shape[1]
        rows = np.nonzero(held[:n_att])[0]
        return CSSIData(np.ascontiguousarray(self.sums[:, rows[:, None], pairs.columns[None, :]], dtype=np.float32),
                        np.ascontiguousarray(self.counts[:, pairs.columns]), self.expression, self.cell_labels, None,
                        pairs, self.sites[held], top_k or pairs.top_k, self.spearman,
                        pooled_scores=pairs.orient(self.pooled_columns[held][:, pairs.columns]))


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
    ``n_gene_null`` times (None or 0 skips that null) for the sites of ``data`` it holds; the others (heads whose
    rows were kept only at the reference TFs) get NaN for it. Rows name their site by its number in
    :func:`site_table` (``data.sites``' index), so blocks of sites scored apart concatenate.
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
    shuffles = shuffled_positives(y, n_null, rng)
    perm_auroc, perm_delta = {}, {}
    if n_gene_null:
        draws = []
        for r in range(n_gene_null):
            permuted = gene_permuted(rng)
            if len(permuted.sites):
                draws.append(permuted.score(np.arange(n_strata), cell_labels, n_strata, with_ranks=False))
            if progress:
                progress(n_null + r + 1, steps)
        held = data.sites.index.get_indexer(permuted.sites.index)   # sites held over every pair (heads when whole)
        for how in AGGREGATIONS:
            perm_auroc[how] = np.full((len(data.sites), n_gene_null), np.nan)             # [S, R]
            perm_delta[how] = np.full((len(data.sites), n_gene_null), np.nan)
            if held.size:
                perm_auroc[how][held] = np.stack([d[how][0] for d in draws], axis=1)
                perm_delta[how][held] = np.stack([d[how][0] - d["pooled"][0] for d in draws], axis=1)
    rows = []
    sites = data.sites
    pooled_auroc, pooled_f1 = observed["pooled"][0], observed["pooled"][1]
    for how in AGGREGATIONS:
        auroc, f1, ranks = observed[how]
        shuffle_null = np.stack([auroc_of_positives(ranks, pos, y.size) for pos in shuffles], axis=1)   # [S, R]
        for m, (metric, value, pooled) in enumerate((("auroc", auroc, pooled_auroc), ("f1", f1, pooled_f1))):
            band = null[how][m]
            p_random = _empirical_p(band - pooled[:, None], value - pooled)
            p_shuffle = _empirical_p(shuffle_null, auroc) if metric == "auroc" else np.full(len(sites), np.nan)
            if n_gene_null and metric == "auroc":
                gene_mean = perm_auroc[how].mean(axis=1)                       # NaN at sites not held
                p_gene = np.where(np.isnan(gene_mean), np.nan, _empirical_p(perm_auroc[how], auroc))
                p_gene_delta = np.where(np.isnan(gene_mean), np.nan, _empirical_p(perm_delta[how], auroc - pooled))
            else:
                p_gene = p_gene_delta = gene_mean = np.full(len(sites), np.nan)
            for s, site in enumerate(sites.index):
                rows.append((n_strata, int(np.unique(assignment).size), int(site), how, metric, float(value[s]),
                             float(pooled[s]), float(value[s] - pooled[s]), float(band[s].mean()),
                             float(np.quantile(band[s], 0.05)), float(np.quantile(band[s], 0.95)),
                             float(p_random[s]), float(p_shuffle[s]), float(gene_mean[s]), float(p_gene[s]),
                             float(p_gene_delta[s]), n_null))
    curve = pd.DataFrame(rows, columns=["n_strata", "n_found", "site", "aggregation", "metric", "value", "pooled",
                                        "delta", "null_mean", "null_low", "null_high", "p_random_strata",
                                        "p_label_shuffle", "gene_permuted_mean", "p_gene_permuted",
                                        "p_gene_permuted_delta", "n_null"])
    curve = curve.merge(sites.reset_index(names="site"), on="site")
    draws = [(n_strata, int(site), how, metric, r, float(null[how][m, s, r]))
             for how in AGGREGATIONS for m, metric in enumerate(METRICS)
             for s, site in enumerate(sites.index) for r in range(n_null)]
    null_table = pd.DataFrame(draws, columns=["n_strata", "site", "aggregation", "metric", "draw", "value"])
    return curve, null_table
