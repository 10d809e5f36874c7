"""Edge scores: attention (per layer and head, and per-layer head means) and Spearman correlation baselines.

Every edge source (edge type, layer, head) scores directed gene pairs over the gene panel; row = query /
regulator-side gene, column = key / target-side gene. Direction is applied at evaluation time (``oriented``). Two
forms hold them, with one reading interface (``sources``, ``panel``, ``observed``, ``oriented(rows, direction)``):

- :class:`EdgeScores` stacks ``S`` dense ``[G, G]`` matrices: each layer's head mean, correlations, baselines;
- :class:`HeadEdges` holds every head at the source genes only (the pooled store's rows and the TFs' columns,
  :class:`~analysis.io.stores.AttentionStore`), and computes scores for the rows an analysis asks for, so the
  ``[layers x heads, G, G]`` array that does not fit at V2-316M's scale is never built.

:func:`combine` stacks sources of both forms (:class:`EdgeSet`). Correlation edges follow the paper's baseline
(section 2.3): Spearman correlation of log1p(CP10k) expression across cells.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..config import DIRECTIONS
from ..io.cells import CellData
from ..io.expression import expression_matrix
from ..io import mapped
from ..io.stores import AttentionStore


@dataclass(frozen=True)
class EdgeScores:
    """``scores``: ``[S, G, G]`` float (NaN = not observed); ``sources``: S rows (edge_type, layer, head), with
    head = -1 for a layer's head mean and layer = head = -1 for non-attention edges; ``observed``: ``[G, G]``
    bool, pairs co-observed in at least one cell; ``panel``: G rows."""

    scores: np.ndarray
    sources: pd.DataFrame
    observed: np.ndarray
    panel: pd.DataFrame
    params: dict

    def source_index(self, edge_type: str, layer: int = -1, head: int = -1) -> int:
        """Row of ``scores`` holding one source (e.g. a layer's head mean: ``attention_layer_mean``, layer)."""
        src = self.sources
        hit = src.index[(src["edge_type"] == edge_type) & (src["layer"] == layer) & (src["head"] == head)]
        if len(hit) == 0:
            raise KeyError(f"no {edge_type} source at layer {layer}, head {head}")
        return int(hit[0])

    def oriented(self, rows: np.ndarray, direction: str) -> np.ndarray:
        """``[S, len(rows), G]`` scores of the pairs (row gene, every gene) under ``direction``
        (:func:`oriented_pair_scores`), a new array."""
        return oriented_pair_scores(self.scores, rows, direction)

    def take(self, indices: list[int]) -> "EdgeScores":
        """The sources at ``indices`` (rows of :attr:`sources`), alone; consecutive sources are a view (a ranking
        block of every layer mean would otherwise copy ``[L, G, G]``)."""
        return EdgeScores(self.scores[source_selector(indices)], self.sources.iloc[indices].reset_index(drop=True),
                          self.observed, self.panel, self.params)

    def restrict(self, symbols: list[str]) -> "EdgeScores":
        """The same sources over the genes ``symbols`` (in that order; each must be in the panel)."""
        idx = panel_positions(self.panel, symbols)
        return EdgeScores(self.scores[:, idx][:, :, idx], self.sources, self.observed[np.ix_(idx, idx)],
                          self.panel.iloc[idx].reset_index(drop=True), self.params)

    def select(self, edge_type: str) -> "EdgeScores":
        """The sources of one edge type, alone."""
        return self.take(list(np.nonzero(self.sources["edge_type"].to_numpy() == edge_type)[0]))


def source_selector(indices: list[int]) -> slice | list[int]:
    """A slice for consecutive ``indices`` (indexing with it is a view: nothing copied, a mapped store stays mapped),
    else the list itself."""
    indices = list(indices)
    consecutive = bool(indices) and indices == list(range(indices[0], indices[-1] + 1))
    return slice(indices[0], indices[-1] + 1) if consecutive else indices


def panel_positions(panel: pd.DataFrame, symbols: list[str]) -> np.ndarray:
    """``[len(symbols)]`` row of each symbol in ``panel`` (each must be there)."""
    index = {s: i for i, s in enumerate(panel["symbol"])}
    return np.array([index[s] for s in symbols], dtype=np.int64)


def mean_scores(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``sums / counts`` in float64 (``counts`` broadcast against ``sums``); NaN where never co-observed."""
    counts = np.asarray(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.asarray(sums, dtype=np.float64) / np.maximum(counts, 1), np.nan)


@dataclass(frozen=True)
class HeadEdges:
    """Per-head mean attention at the source genes (module doc). ``row_sums``: ``[S, R, G]`` attention of source
    ``r`` (query) on every panel gene summed over cells; ``col_sums``: ``[S, C, G]`` attention of every panel gene
    (query) on source ``r < C`` (key), for the first ``C`` sources (the reference TFs and genes asked for); either may
    be memory-mapped. ``rows``: ``[R]`` panel indices of the sources; ``counts``: ``[G, G]`` co-occurrence;
    ``sources``: S rows (edge_type ``attention``, layer, head)."""

    row_sums: np.ndarray
    col_sums: np.ndarray
    rows: np.ndarray
    counts: np.ndarray
    sources: pd.DataFrame
    panel: pd.DataFrame
    params: dict

    @property
    def observed(self) -> np.ndarray:
        """``[G, G]`` bool: co-observed in at least one cell."""
        return np.asarray(self.counts) > 0

    @property
    def column_rows(self) -> np.ndarray:
        """``[C]`` panel indices of the sources whose columns are kept."""
        return self.rows[: self.col_sums.shape[1]]

    def kept(self, panel_rows: np.ndarray, columns: bool = False) -> np.ndarray:
        """``[len(panel_rows)]`` position of each panel row among :attr:`rows` (``columns``: among the sources whose
        columns are kept); a KeyError names genes not kept."""
        kept_rows = self.column_rows if columns else self.rows
        where = {int(r): i for i, r in enumerate(kept_rows)}
        missing = [str(self.panel["symbol"].iloc[int(r)]) for r in panel_rows if int(r) not in where]
        if missing:
            what = ("per-head attention on a gene as key (target -> TF) is kept for reference TFs and "
                    "extraction.source_genes only" if columns else
                    "per-head attention is kept for reference TFs, perturbed genes and extraction.source_genes only")
            raise KeyError(f"{what}; not for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        return np.array([where[int(r)] for r in panel_rows], dtype=np.int64)

    def oriented(self, rows: np.ndarray, direction: str) -> np.ndarray:
        """``[S, len(rows), G]`` scores of (row gene, every gene) under ``direction``, as
        :func:`oriented_pair_scores` reads a dense matrix: ``tf_to_target`` A[row, gene], ``target_to_tf``
        A[gene, row], ``symmetric`` their mean, a new array. A memory-mapped store's pages are handed back after the
        read."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        rows = np.asarray(rows, dtype=np.int64)
        counts = np.asarray(self.counts)[rows][None]                          # symmetric: same for both directions
        forward = mean_scores(self.row_sums[:, self.kept(rows)], counts) if direction != "target_to_tf" else None
        backward = (mean_scores(self.col_sums[:, self.kept(rows, columns=True)], counts)
                    if direction != "tf_to_target" else None)
        mapped.release(self.row_sums, self.col_sums)       # a scan over many rows holds one read's pages at a time
        if direction == "symmetric":
            return (forward + backward) / 2
        return forward if backward is None else backward

    def take(self, indices: list[int]) -> "HeadEdges":
        """The heads at ``indices`` (rows of :attr:`sources`), alone; consecutive heads of a memory-mapped store stay
        mapped (a view: nothing is read until rows are asked for)."""
        at = source_selector(indices)
        return HeadEdges(self.row_sums[at], self.col_sums[at], self.rows, self.counts,
                         self.sources.iloc[indices].reset_index(drop=True), self.panel, self.params)

    def head(self, layer: int, head: int) -> "HeadEdges":
        """One head, alone (a KeyError when the store has no such head)."""
        hit = np.nonzero((self.sources["layer"].to_numpy() == layer) & (self.sources["head"].to_numpy() == head))[0]
        if hit.size == 0:
            raise KeyError(f"no attention head L{layer}H{head}")
        return self.take([int(hit[0])])

    def select(self, edge_type: str) -> "HeadEdges":
        return self.take(list(np.nonzero(self.sources["edge_type"].to_numpy() == edge_type)[0]))

    def restrict(self, symbols: list[str]) -> "HeadEdges":
        """The same heads over the genes ``symbols`` (in that order; each in the panel): the sources among them keep
        their rows (and columns, where kept), restricted to those genes; those with columns lead, as in a store."""
        idx = panel_positions(self.panel, symbols)
        where = {int(r): i for i, r in enumerate(self.rows)}
        n_columns = self.col_sums.shape[1]
        at = [(where[int(g)], i) for i, g in enumerate(idx) if int(g) in where]
        ordered = sorted(at, key=lambda pair: pair[0] >= n_columns)                      # column sources first
        source_at = np.array([s for s, _ in ordered], dtype=np.int64)
        column_at = source_at[source_at < n_columns]
        return HeadEdges(np.asarray(self.row_sums[:, source_at])[:, :, idx],
                         np.asarray(self.col_sums[:, column_at])[:, :, idx],
                         np.array([i for _, i in ordered], dtype=np.int64), np.asarray(self.counts)[np.ix_(idx, idx)],
                         self.sources, self.panel.iloc[idx].reset_index(drop=True), self.params)


@dataclass(frozen=True)
class EdgeSet:
    """Sources of several edge objects over one panel, read as one (:func:`combine`)."""

    parts: tuple

    @property
    def sources(self) -> pd.DataFrame:
        return pd.concat([p.sources for p in self.parts], ignore_index=True)

    @property
    def panel(self) -> pd.DataFrame:
        return self.parts[0].panel

    @property
    def observed(self) -> np.ndarray:
        return self.parts[0].observed

    def oriented(self, rows: np.ndarray, direction: str) -> np.ndarray:
        return np.concatenate([p.oriented(rows, direction) for p in self.parts])

    def select(self, edge_type: str) -> "EdgeSet":
        return EdgeSet(tuple(p.select(edge_type) for p in self.parts if (p.sources["edge_type"] == edge_type).any()))


def head_edges(store: AttentionStore) -> HeadEdges:
    """Every head of ``store`` at its source genes (views of its arrays: nothing computed, nothing copied)."""
    n_layers, n_heads = store.n_layers, store.n_heads
    return HeadEdges(store.head_rows.reshape(n_layers * n_heads, *store.head_rows.shape[2:]),
                     store.head_cols.reshape(n_layers * n_heads, *store.head_cols.shape[2:]), store.source_rows,
                     store.counts, pd.DataFrame({"edge_type": "attention", "layer": np.repeat(np.arange(n_layers),
                                                                                              n_heads),
                                                 "head": np.tile(np.arange(n_heads), n_layers)}),
                     store.panel, {"kind": "attention", "n_cells": store.n_cells})


def attention_edges(store: AttentionStore) -> tuple[HeadEdges, EdgeScores]:
    """(every head at the store's source genes, each layer's head mean over every pair ``[L, G, G]`` float64)."""
    n_layers = store.n_layers
    heads = head_edges(store)
    sources = pd.DataFrame({"edge_type": "attention_layer_mean", "layer": np.arange(n_layers), "head": -1})
    counts = np.asarray(store.counts)
    layer_means = EdgeScores(layer_mean_scores(store.layer_sums, counts), sources, counts > 0, store.panel,
                             {"kind": "attention", "n_cells": store.n_cells})
    return heads, layer_means


def layer_mean_scores(layer_sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``[L, G, G]`` float64 :func:`mean_scores` of ``layer_sums`` ``[L, G, G]`` (memory-mapped or not) over
    ``counts`` ``[G, G]``, one layer at a time into the result, handing each layer's read pages back
    (:func:`analysis.io.mapped.release`): the stage holds the result and one layer's temporaries, not three copies."""
    out = np.empty(layer_sums.shape, dtype=np.float64)
    for layer in range(layer_sums.shape[0]):
        out[layer] = mean_scores(layer_sums[layer], counts)
        mapped.release(layer_sums)
    return out


def spearman_matrix(x: np.ndarray) -> np.ndarray:
    """``[G, G]`` Spearman correlation between the columns of ``x`` ``[cells, G]`` (average ranks for ties);
    NaN in the rows and columns of genes constant over these cells."""
    r = rankdata(x, axis=0)
    r -= r.mean(axis=0)
    norm = np.sqrt((r ** 2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (r.T @ r) / np.outer(norm, norm)


class SubsetSpearman:
    """Spearman correlations within many subsets of the same cells ``x`` ``[cells, G]`` (CSSI's strata, random strata
    and bootstrap draws), equal to :func:`spearman_matrix` of ``x[subset]`` at the asked pairs.

    Each gene's values are coded once by their order over all cells (equal values, equal code); a subset's average
    ranks are then counts of codes, ``rank = #{smaller} + (#{equal} + 1) / 2``, from one ``bincount`` over ``[n, G]``
    instead of a sort per gene and subset, and only the rows of the asked pairs are multiplied. When ``G x``
    (distinct values per gene) exceeds ``max_bins`` the subset is ranked by sorting instead (same numbers)."""

    def __init__(self, x: np.ndarray, max_bins: int = 20_000_000):
        self.x = np.asarray(x, dtype=np.float64)
        n, g = self.x.shape
        order = np.argsort(self.x, axis=0, kind="stable")
        ordered = np.take_along_axis(self.x, order, axis=0)
        new = np.ones_like(ordered, dtype=bool)
        new[1:] = ordered[1:] != ordered[:-1]
        dense = np.cumsum(new, axis=0) - 1
        self.width = int(dense[-1].max()) + 1 if n else 1
        self.n_genes = g
        self.codes = None
        if g * self.width <= max_bins:
            codes = np.empty_like(dense)
            np.put_along_axis(codes, order, dense, axis=0)
            self.codes = codes + np.arange(g) * self.width

    def ranks(self, cells: np.ndarray) -> np.ndarray:
        """``[n, G]`` average ranks (1-based) of each gene over ``cells`` (indices, repeats allowed, or a mask)."""
        if self.codes is None:
            return rankdata(self.x[cells], axis=0)
        codes = self.codes[cells]
        count = np.bincount(codes.ravel(), minlength=self.n_genes * self.width).reshape(self.n_genes, self.width)
        smaller = (np.cumsum(count, axis=1) - count).ravel()
        return smaller[codes] + (count.ravel()[codes] + 1) / 2

    def pairs(self, cells: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """``[len(columns)]`` Spearman rho over ``cells`` at flat ``[G * G]`` pair indices ``columns`` (NaN where a
        gene is constant over those cells)."""
        r = self.ranks(cells)
        r -= r.mean(axis=0)
        norm = np.sqrt((r ** 2).sum(axis=0))
        row, col = np.divmod(columns, self.n_genes)
        rows, where = np.unique(row, return_inverse=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            block = (r[:, rows].T @ r) / np.outer(norm[rows], norm)                      # [rows, G]
        return block[where, col]


def spearman_edges(cells: CellData, panel: pd.DataFrame) -> EdgeScores:
    """Spearman correlation across all cells between panel genes (symmetric; constant genes score 0)."""
    corr = np.nan_to_num(spearman_matrix(expression_matrix(cells, panel["gene_id"].to_numpy())), nan=0.0)
    sources = pd.DataFrame({"edge_type": ["spearman"], "layer": [-1], "head": [-1]})
    return EdgeScores(corr[None], sources, np.ones_like(corr, dtype=bool), panel,
                      {"kind": "spearman", "n_cells": cells.n_cells, "expression": "log1p CP10k"})


CORRELATION_EDGE_TYPES = {"signed": "spearman", "absolute": "spearman_absolute", "sign_matched": "spearman_sign_matched"}


def correlation_variants(corr: EdgeScores, de_table: pd.DataFrame, modality: str) -> EdgeScores:
    """The three correlation edges of ``PerturbationConfig.correlation_edge`` as sources over one panel: signed
    rho (the paper's), |rho|, and sign-matched ``rho[p, g] * d * sign(lfc[p, g])`` for each perturbed gene p (row p;
    d = -1 for CRISPRi, +1 for CRISPRa), which is +|rho| when the edge's sign predicts the observed direction of
    change of g and -|rho| when it contradicts it (rows of genes not perturbed keep rho; ``de_table``: schema
    ``de_results``, genes outside it score 0)."""
    rho = corr.scores[0]
    index = {s: i for i, s in enumerate(corr.panel["symbol"])}
    matched = rho.copy()
    d = -1.0 if modality == "crispri" else 1.0
    sub = de_table[de_table["perturbation"].isin(index)]
    for pert, tab in sub.groupby("perturbation", sort=False):
        row = np.zeros(rho.shape[1])
        tab = tab[tab["symbol"].isin(index)]
        cols = tab["symbol"].map(index).to_numpy()
        row[cols] = rho[index[pert], cols] * d * np.sign(tab["lfc"].to_numpy())
        matched[index[pert]] = row
    sources = pd.DataFrame({"edge_type": list(CORRELATION_EDGE_TYPES.values()), "layer": -1, "head": -1})
    return EdgeScores(np.stack([rho, np.abs(rho), matched]), sources, corr.observed, corr.panel,
                      {**corr.params, "modality": modality})


def oriented_pair_scores(scores: np.ndarray, tf_rows: np.ndarray, direction: str) -> np.ndarray:
    """``[S, n_tf, G]`` scores of pairs (TF, gene) under ``direction``: ``tf_to_target`` reads A[tf, gene]
    (TF as query), ``target_to_tf`` reads A[gene, tf], ``symmetric`` averages the two; a new array (the rows are
    gathered), which a caller may write into."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    forward = scores[:, tf_rows, :]
    if direction == "tf_to_target":
        return forward
    backward = np.swapaxes(scores[:, :, tf_rows], 1, 2)
    return backward if direction == "target_to_tf" else (forward + backward) / 2


def combine(*edges) -> EdgeSet:
    """Stack edge sources over the same panel (dense :class:`EdgeScores` and :class:`HeadEdges` alike)."""
    return EdgeSet(tuple(edges))
