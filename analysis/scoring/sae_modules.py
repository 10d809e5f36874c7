"""Co-activation modules of SAE features (the companion paper's modules: 141 in Geneformer, 76 in scGPT):
features that fire together over the same gene positions. Among the ``max_features`` most frequent live features
that are not dense, an edge joins two whose activations correlate at Pearson r >= ``min_r``
(:func:`analysis.scoring.sae_features.activation_correlation`); modules are Leiden communities of that graph
(modularity, edge weight r, seeded) with at least ``min_size`` features, numbered by size; every other feature has
module -1. A seeded Fruchterman-Reingold layout of the graph places each feature with an edge on the page's map.
"""
from __future__ import annotations

import random

import igraph as ig
import leidenalg
import numpy as np
import pandas as pd
from scipy import sparse

from .sae_features import activation_correlation


def coactivation_modules(latents: sparse.csr_matrix, firing_rate: np.ndarray, dense: np.ndarray, *,
                         min_r: float = 0.3, max_features: int = 2000, min_size: int = 3, seed: int = 0
                         ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(module ``[F]`` int, layout ``[F, 2]`` (NaN for features without an edge), edges with columns ``a``, ``b``,
    ``r``) of one layer's features; ``latents`` ``[rows, F]``, ``firing_rate`` and ``dense`` ``[F]``."""
    n = latents.shape[1]
    live = np.flatnonzero((firing_rate > 0) & ~dense)
    candidates = live[np.argsort(-firing_rate[live], kind="stable")[:max_features]]
    module, layout = np.full(n, -1), np.full((n, 2), np.nan)
    empty = pd.DataFrame({"a": pd.Series(dtype=int), "b": pd.Series(dtype=int), "r": pd.Series(dtype=float)})
    if candidates.size < 2:
        return module, layout, empty
    columns = latents[:, candidates]
    r = np.nan_to_num(activation_correlation(columns, columns), nan=0.0)
    i, j = np.nonzero(np.triu(r >= min_r, k=1))
    if i.size == 0:
        return module, layout, empty
    nodes = np.unique(np.concatenate([i, j]))
    local = np.searchsorted(nodes, np.stack([i, j], axis=1))
    graph = ig.Graph(n=nodes.size, edges=local.tolist(), edge_attrs={"weight": r[i, j].tolist()})
    partition = leidenalg.find_partition(graph, leidenalg.ModularityVertexPartition, weights="weight", seed=seed)
    membership = np.asarray(partition.membership)
    sizes = np.bincount(membership)
    kept = [m for m in np.argsort(-sizes, kind="stable") if sizes[m] >= min_size]
    renumber = np.full(sizes.size, -1)
    renumber[kept] = np.arange(len(kept))
    module[candidates[nodes]] = renumber[membership]
    ig.set_random_number_generator(random.Random(seed))
    try:
        layout[candidates[nodes]] = np.asarray(graph.layout_fruchterman_reingold(weights="weight", niter=300).coords)
    finally:
        ig.set_random_number_generator(random)
    edges = pd.DataFrame({"a": candidates[i], "b": candidates[j], "r": r[i, j]})
    return module, layout, edges
