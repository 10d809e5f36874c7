"""Synthetic validation of CSSI (Supplementary Note 11.1, Supplementary Table S5).

Design: state-specific gene regulatory networks. One signed TF -> target network is drawn (analysis.sim.simulate);
each edge is active in one random cell state, or in all states with probability ``shared``; cells of state s are
sampled from the network restricted to the edges active in s, with the state's own TF activity (state means
``state_contrast`` times the embedded simulation's spread, so states separate as distinct cell types do). Pooled inference
(Spearman over all cells) is compared with CSSI-max (per-stratum Spearman, max across strata) with oracle strata
(the true states) and learned strata (:func:`analysis.scoring.strata.stratify` on expression PCA, as many strata as
states). Score: top-k F1 against the union network (``k`` = number of true edges) and AUROC over all (TF, gene)
pairs. The paper's configurations (cells, states) and its CSSI-max / pooled F1 ratios are in :data:`PAPER`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from ..config import SimulationConfig
from ..scoring.cssi import aggregate, recovery, spearman_by_stratum
from ..scoring.strata import stratify
from .simulate import make_network, sample_counts

# (configuration, cells, states, paper's CSSI-max / pooled F1 ratio), Supplementary Table S5
PAPER = (("Small", 200, 2, 1.13), ("Medium", 400, 4, 1.40), ("Large", 600, 6, 1.85), ("XLarge", 1000, 8, 1.76),
         ("XXLarge", 1000, 10, 1.81), ("Massive", 1500, 12, 1.79))


def state_specific_screen(n_cells: int, n_states: int, seed: int, *, n_tfs: int = 12, n_targets: int = 60,
                          targets_per_tf: int = 6, shared: float = 0.2, state_contrast: float = 2.0
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log1p CP10k expression ``[cells, G]``, true state ``[cells]`` and union-network labels ``[n_tfs, G]``."""
    cfg = SimulationConfig(n_tfs=n_tfs, n_targets=n_targets, n_states=n_states, targets_per_tf=targets_per_tf,
                           seed=seed)
    net = make_network(cfg)
    net = dataclasses.replace(net, state_activity=net.state_activity * state_contrast)
    rng = np.random.default_rng([seed, 7])
    edge_state = rng.integers(0, n_states, net.weights.shape)
    is_shared = rng.random(net.weights.shape) < shared
    states = rng.integers(0, n_states, n_cells)
    counts = np.zeros((n_cells, len(net.symbols)))
    for s in range(n_states):
        member = np.nonzero(states == s)[0]
        active = dataclasses.replace(net, weights=net.weights * ((edge_state == s) | is_shared))
        counts[member] = sample_counts(active, np.full(member.size, s), np.full(member.size, -1), 1.0, rng)
    lib = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    return np.log1p(counts / lib * 1e4), states, net.weights != 0


def compare(expression: np.ndarray, labels: np.ndarray, strata: np.ndarray, n_strata: int) -> dict[str, float]:
    """Pooled vs CSSI-max Spearman recovery of ``labels`` ``[n_tfs, G]`` (TFs are the first genes)."""
    n_tfs, g = labels.shape
    tf, gene = np.nonzero(~np.eye(n_tfs, g, dtype=bool))
    columns = tf * g + gene
    y = labels[tf, gene]
    k = int(y.sum())
    pooled = spearman_by_stratum(expression, np.zeros(expression.shape[0], int), 1, columns)
    per = spearman_by_stratum(expression, strata, n_strata, columns)
    cssi = aggregate(per, pooled[0], "max")
    auroc, f1, _ = recovery(np.stack([pooled[0], cssi]), y, k)
    return {"pooled_f1": f1[0], "cssi_f1": f1[1], "pooled_auroc": auroc[0], "cssi_auroc": auroc[1]}


def validate(seeds: int, *, configs=PAPER, n_neighbors: int = 15, progress=None) -> pd.DataFrame:
    """One row per (configuration, seed, strata source) with pooled and CSSI-max F1 / AUROC (schema
    ``cssi_synthetic``)."""
    rows = []
    total, done = len(configs) * seeds, 0
    for name, n_cells, n_states, paper in configs:
        for seed in range(seeds):
            x, states, labels = state_specific_screen(n_cells, n_states, seed)
            pcs = PCA(n_components=min(30, x.shape[1] - 1), random_state=seed).fit_transform(x)
            learned = stratify(pcs, n_strata=(n_states,), n_fine=max(3 * n_states, 12), n_neighbors=n_neighbors,
                               min_size=5, seed=seed).cell_labels(n_states)
            for source, strata in (("oracle", states), ("learned", learned)):
                rows.append({"config": name, "n_cells": n_cells, "n_states": n_states, "seed": seed,
                             "strata": source, **compare(x, labels, strata, n_states), "paper_ratio": paper})
            done += 1
            if progress:
                progress(done, total)
    return pd.DataFrame(rows)
