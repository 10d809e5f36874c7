"""Edge scores: attention (per layer and head, and per-layer head means) and Spearman correlation baselines.

An :class:`EdgeScores` stacks ``S`` directed ``[G, G]`` score matrices over the gene panel, one per *source*
(edge type, layer, head); row = query / regulator-side gene, column = key / target-side gene. Direction is
applied at evaluation time (:func:`oriented_pair_scores`). Correlation edges follow the paper's baseline
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

    def restrict(self, symbols: list[str]) -> "EdgeScores":
        """The same sources over the genes ``symbols`` (in that order; each must be in the panel)."""
        index = {s: i for i, s in enumerate(self.panel["symbol"])}
        idx = np.array([index[s] for s in symbols], dtype=np.int64)
        return EdgeScores(self.scores[:, idx][:, :, idx], self.sources, self.observed[np.ix_(idx, idx)],
                          self.panel.iloc[idx].reset_index(drop=True), self.params)

    def select(self, edge_type: str) -> "EdgeScores":
        """The sources of one edge type, alone."""
        keep = np.nonzero(self.sources["edge_type"].to_numpy() == edge_type)[0]
        return EdgeScores(self.scores[keep], self.sources.iloc[keep].reset_index(drop=True), self.observed,
                          self.panel, self.params)


def attention_edges(store: AttentionStore) -> EdgeScores:
    """Per-head mean attention plus the per-layer mean over heads."""
    mean = store.mean_attention()                       # [L, H, G, G]
    n_layers, n_heads = mean.shape[:2]
    layer_mean = mean.mean(axis=1)                      # [L, G, G]
    scores = np.concatenate([mean.reshape(n_layers * n_heads, *mean.shape[2:]), layer_mean], axis=0)
    sources = pd.DataFrame({
        "edge_type": ["attention"] * (n_layers * n_heads) + ["attention_layer_mean"] * n_layers,
        "layer": list(np.repeat(np.arange(n_layers), n_heads)) + list(range(n_layers)),
        "head": list(np.tile(np.arange(n_heads), n_layers)) + [-1] * n_layers,
    })
    return EdgeScores(scores, sources, np.asarray(store.counts) > 0, store.panel,
                      {"kind": "attention", "n_cells": store.n_cells})


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
    (TF as query), ``target_to_tf`` reads A[gene, tf], ``symmetric`` averages the two."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    forward = scores[:, tf_rows, :]
    if direction == "tf_to_target":
        return forward
    backward = np.swapaxes(scores[:, :, tf_rows], 1, 2)
    return backward if direction == "target_to_tf" else (forward + backward) / 2


def combine(*edges: EdgeScores) -> EdgeScores:
    """Stack edge sources over the same panel."""
    return EdgeScores(np.concatenate([e.scores for e in edges]), pd.concat([e.sources for e in edges], ignore_index=True),
                      edges[0].observed, edges[0].panel, {"kind": "combined"})
