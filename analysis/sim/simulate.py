"""The embedded default: a seeded GRN-driven single-cell screen with known ground truth.

Transcription factors (TFs) regulate targets through signed edges (activation / repression); cell states
differ in TF activity; per-cell TF activity fluctuates around its state mean, so targets co-vary with their
regulators within and across states. Counts are negative binomial around ``size_factor * exp(log_mean)``
with extra zero inflation (dropout). CRISPRi knockdown groups scale one TF's activity and transcript to
``knockdown_residual``, so its true targets shift: the ground truth for perturbation-first evaluation
(paper section 2.3). The true network is written in TRRUST v2's raw TSV layout (TF, target, mode, PMIDs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..config import SimulationConfig

NB_THETA = 4.0          # negative-binomial inverse dispersion
DROPOUT = 0.08          # extra zero inflation on top of NB zeros
ACTIVATION_SHARE = 0.7  # share of edges that activate


@dataclass(frozen=True)
class SimulatedNetwork:
    """Ground truth. ``weights[tf, gene]`` (shape ``[n_tfs, n_genes]``) is the signed effect of TF log-activity
    on the gene's log-mean; gene order is ``symbols`` (TFs first)."""

    symbols: tuple[str, ...]
    gene_ids: tuple[str, ...]
    n_tfs: int
    weights: np.ndarray
    base_log_mean: np.ndarray
    state_activity: np.ndarray  # [n_states, n_tfs] mean TF log-activity per state

    def edges(self) -> pd.DataFrame:
        """Tidy true edges: tf, target, mode, weight."""
        tf_idx, gene_idx = np.nonzero(self.weights)
        w = self.weights[tf_idx, gene_idx]
        return pd.DataFrame({
            "tf": [self.symbols[i] for i in tf_idx],
            "target": [self.symbols[j] for j in gene_idx],
            "mode": np.where(w > 0, "Activation", "Repression"),
            "weight": w,
        })

    def write_trrust(self, path: Path) -> Path:
        """Write the true network as TRRUST v2 raw TSV (no header: TF, target, mode, PMIDs)."""
        e = self.edges()
        e.assign(pmid="simulated")[["tf", "target", "mode", "pmid"]].to_csv(
            path, sep="\t", header=False, index=False)
        return path


def make_network(cfg: SimulationConfig) -> SimulatedNetwork:
    """Draw the signed TF -> target network, baseline expression and state-specific TF activity."""
    rng = np.random.default_rng(cfg.seed)
    n_genes = cfg.n_tfs + cfg.n_targets
    symbols = tuple([f"TF{i + 1:02d}" for i in range(cfg.n_tfs)] + [f"GENE{i + 1:03d}" for i in range(cfg.n_targets)])
    gene_ids = tuple(f"ENSSIM{i + 1:011d}" for i in range(n_genes))
    weights = np.zeros((cfg.n_tfs, n_genes))
    for tf in range(cfg.n_tfs):
        # mostly non-TF targets, occasionally another TF (hierarchical regulation), never itself
        candidates = np.setdiff1d(np.arange(n_genes), [tf])
        chosen = rng.choice(candidates, size=cfg.targets_per_tf, replace=False)
        sign = np.where(rng.random(cfg.targets_per_tf) < ACTIVATION_SHARE, 1.0, -1.0)
        weights[tf, chosen] = sign * rng.uniform(0.7, 1.3, cfg.targets_per_tf)
    base = rng.normal(0.8, 0.7, n_genes)
    state_activity = rng.normal(0.0, 0.9, (cfg.n_states, cfg.n_tfs))
    return SimulatedNetwork(symbols, gene_ids, cfg.n_tfs, weights, base, state_activity)


def sample_counts(net: SimulatedNetwork, states: np.ndarray, knockdown_tf: np.ndarray, residual: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Counts ``[cells, genes]`` (int32) for cells with the given state index and knocked-down TF (-1 = none)."""
    n_cells = states.size
    log_act = net.state_activity[states] + rng.normal(0.0, 0.6, (n_cells, net.n_tfs))
    kd = knockdown_tf >= 0
    log_act[np.nonzero(kd)[0], knockdown_tf[kd]] += np.log(residual)
    centred = log_act - net.state_activity.mean(axis=0)
    log_mean = net.base_log_mean + centred @ net.weights
    log_mean[:, : net.n_tfs] += centred  # a TF's own transcript follows its activity
    size = rng.lognormal(0.0, 0.25, (n_cells, 1))
    mu = size * np.exp(np.clip(log_mean, -4, 5))
    lam = rng.gamma(NB_THETA, mu / NB_THETA)
    counts = rng.poisson(lam)
    counts[rng.random(counts.shape) < DROPOUT] = 0
    return counts.astype(np.int32)


def simulate_screen(cfg: SimulationConfig, *, n_cells: int | None = None, seed_offset: int = 0,
                    with_perturbations: bool = True) -> tuple[ad.AnnData, SimulatedNetwork]:
    """Simulate a CRISPRi screen: AnnData with raw counts in ``X`` (cells x genes, int32), ``obs`` columns
    ``cell_state``, ``perturbation`` (``control`` or the knocked-down TF symbol) and ``n_counts``; ``var``
    index = gene symbols with an ``ensembl_id`` column. ``seed_offset`` draws new cells from the same network."""
    net = make_network(cfg)
    n = cfg.n_cells if n_cells is None else n_cells
    rng = np.random.default_rng([cfg.seed, 1 + seed_offset])
    states = rng.integers(0, cfg.n_states, n)
    knockdown = np.full(n, -1)
    if with_perturbations:
        perturbed = rng.choice(net.n_tfs, size=min(cfg.n_perturbed, net.n_tfs), replace=False)
        is_pert = rng.random(n) >= cfg.control_fraction
        knockdown[is_pert] = rng.choice(perturbed, size=int(is_pert.sum()))
    counts = sample_counts(net, states, knockdown, cfg.knockdown_residual, rng)
    obs = pd.DataFrame({
        "cell_state": pd.Categorical([f"state{s + 1}" for s in states]),
        "perturbation": pd.Categorical(np.where(knockdown >= 0, np.array(net.symbols)[np.maximum(knockdown, 0)],
                                                "control")),
        "n_counts": counts.sum(axis=1).astype(np.int64),
    }, index=[f"cell{i:05d}" for i in range(n)])
    var = pd.DataFrame({"ensembl_id": list(net.gene_ids)}, index=list(net.symbols))
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    return adata, net


def constructed_edges(net: SimulatedNetwork, symbols: list[str], gene_variance: np.ndarray, *, seed: int = 0
                      ) -> dict[str, np.ndarray]:
    """Two ``[G, G]`` edge scores over ``symbols`` for testing incremental value (issue: simulation ground truth).

    ``oracle``: |true weight of gene i on gene j| plus noise, i.e. pairwise information that no gene-level feature
    carries; ``gene_only``: the target gene's variance plus noise, i.e. no pairwise information at all. A sound
    incremental-value test finds value in the first and none in the second.
    """
    rng = np.random.default_rng(seed)
    index = {s: i for i, s in enumerate(net.symbols)}
    g = len(symbols)
    pos = np.array([index.get(s, -1) for s in symbols])
    weights = np.zeros((g, g))
    tf_rows = np.nonzero((pos >= 0) & (pos < net.n_tfs))[0]
    cols = pos >= 0
    for i in tf_rows:
        weights[i, cols] = np.abs(net.weights[pos[i], pos[cols]])
    oracle = weights + rng.normal(0, 0.3, (g, g))
    gene_only = np.broadcast_to(gene_variance, (g, g)) + rng.normal(0, 0.05 * gene_variance.std() + 1e-9, (g, g))
    return {"oracle": oracle, "gene_only": gene_only}
