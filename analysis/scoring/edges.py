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


def spearman_edges(cells: CellData, panel: pd.DataFrame) -> EdgeScores:
    """Spearman correlation across all cells between panel genes (symmetric; constant genes score 0)."""
    corr = np.nan_to_num(spearman_matrix(expression_matrix(cells, panel["gene_id"].to_numpy())), nan=0.0)
    sources = pd.DataFrame({"edge_type": ["spearman"], "layer": [-1], "head": [-1]})
    return EdgeScores(corr[None], sources, np.ones_like(corr, dtype=bool), panel,
                      {"kind": "spearman", "n_cells": cells.n_cells, "expression": "log1p CP10k"})


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
