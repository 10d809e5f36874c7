"""What a sparse-autoencoder feature of the residual stream responds to (torch-free, like all of
``analysis.scoring``). A trained SAE's latents are kept sparse: per activation row (one gene position of one cell,
:class:`analysis.io.activations.ActivationStore`), the ``k`` active features' ``indices`` and ``values``
``[rows, k]`` (a value of 0 is a latent TopK kept but ReLU silenced).

- :func:`feature_gene_means`: ``[F, G]`` each feature's mean activation over the rows of each gene, the
  "genes x features" view of where a feature fires;
- :func:`top_genes`: each feature's gene set, its ``n`` genes of highest mean activation among those it fired on;
- :func:`gene_set_enrichment`: one-sided hypergeometric over-representation of reference gene sets (a TF's regulon,
  a STRING neighbourhood) in each feature's gene set, over the genes observed, Benjamini-Hochberg across every
  (feature, set) test, as the companion paper annotates features against TRRUST and STRING;
- :func:`activation_correlation`: Pearson correlation between two sets of features' activations over the same rows
  (two layers read at the same positions: the cross-layer flow the companion paper calls highways; or one layer
  against itself: co-activation), from sparse products, never a dense ``[rows, F]`` matrix;
- :func:`cell_feature_activity`, :func:`regulon_activity` and :func:`best_feature_match`: each feature's activity
  per cell (mean over the cell's rows) against cell programmes (a cell-state indicator, a TF's activity read from
  its regulon's expression): the best feature's correlation with each programme, the SAE positive control.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.stats import hypergeom

from .stats import benjamini_hochberg

N_FEATURE_GENES = 20   # a feature's own genes: its top genes by mean activation (card, enrichment, regulatory test)


def latent_matrix(indices: np.ndarray, values: np.ndarray, n_features: int) -> sparse.csr_matrix:
    """``[rows, F]`` sparse activations from the ``[rows, k]`` active ``indices`` and their ``values``."""
    rows, k = indices.shape
    return sparse.csr_matrix((values.ravel().astype(np.float64), (np.repeat(np.arange(rows), k), indices.ravel())),
                             shape=(rows, n_features))


def feature_gene_means(indices: np.ndarray, values: np.ndarray, row_gene: np.ndarray, n_genes: int,
                       n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(``[F, G]`` mean activation of each feature over every row of each gene, 0 where it never fired;
    ``[G]`` rows per gene)."""
    per_gene = np.bincount(row_gene, minlength=n_genes)
    k = indices.shape[1]
    sums = sparse.csr_matrix((values.ravel().astype(np.float64), (indices.ravel(), np.repeat(row_gene, k))),
                             shape=(n_features, n_genes)).toarray()
    return sums / np.maximum(per_gene, 1), per_gene


def top_genes(means: np.ndarray, n: int) -> np.ndarray:
    """``[F, G]`` bool: each feature's ``n`` genes of highest mean activation among those with a positive mean
    (fewer when it fired on fewer genes; ties broken by gene order)."""
    order = np.argsort(-means, axis=1, kind="stable")[:, :n]
    chosen = np.zeros(means.shape, dtype=bool)
    np.put_along_axis(chosen, order, True, axis=1)
    return chosen & (means > 0)


def gene_set_enrichment(selected: np.ndarray, gene_sets: np.ndarray, universe: np.ndarray,
                        set_names: list[str] | None = None) -> pd.DataFrame:
    """Over-representation of every gene set in every feature's genes: ``selected`` ``[F, G]`` bool (a feature's
    genes), ``gene_sets`` ``[S, G]`` bool, ``universe`` ``[G]`` bool (the genes that could have been selected: those
    observed). Per (feature, set) with an overlap of at least one gene: overlap ``x``, feature genes ``N`` and set
    size ``n`` within the universe of ``M`` genes; ``p = P(X >= x)`` for X hypergeometric (M, n, N), which is
    Fisher's exact test, one-sided; ``fold`` = x / (N n / M); ``q``: Benjamini-Hochberg over every (feature, set)
    pair tested (pairs with no overlap have p = 1 and are counted in the correction, not listed)."""
    sel = selected & universe
    sets = gene_sets & universe
    m = int(universe.sum())
    overlap = sel.astype(np.int64) @ sets.T.astype(np.int64)                       # [F, S]
    n_feature = sel.sum(axis=1)[:, None] * np.ones(sets.shape[0], dtype=np.int64)
    n_set = np.ones(sel.shape[0], dtype=np.int64)[:, None] * sets.sum(axis=1)[None, :]
    p = np.where(overlap > 0, hypergeom.sf(overlap - 1, m, n_set, n_feature), 1.0)
    q = benjamini_hochberg(p.ravel()).reshape(p.shape)
    f, s = np.nonzero(overlap > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        fold = overlap[f, s] / (n_feature[f, s] * n_set[f, s] / m)
    names = np.asarray(set_names if set_names is not None else [str(i) for i in range(sets.shape[0])], dtype=object)
    return pd.DataFrame({"feature": f, "gene_set": names[s], "overlap": overlap[f, s],
                         "feature_genes": n_feature[f, s], "set_genes": n_set[f, s], "universe": m, "fold": fold,
                         "p": p[f, s], "q": q[f, s]}).sort_values(["q", "p", "feature"], kind="stable",
                                                                  ignore_index=True)


def activation_correlation(a: sparse.csr_matrix, b: sparse.csr_matrix) -> np.ndarray:
    """``[F_a, F_b]`` Pearson correlation over rows between the columns of ``a`` ``[rows, F_a]`` and ``b``
    ``[rows, F_b]`` (the same rows); NaN for a feature that is constant over the rows (never fired)."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"the two activation matrices cover different rows ({a.shape[0]} and {b.shape[0]})")
    n = a.shape[0]
    mean_a, mean_b = np.asarray(a.mean(axis=0)).ravel(), np.asarray(b.mean(axis=0)).ravel()
    var_a = np.asarray(a.multiply(a).mean(axis=0)).ravel() - mean_a ** 2
    var_b = np.asarray(b.multiply(b).mean(axis=0)).ravel() - mean_b ** 2
    cov = (a.T @ b).toarray() / n - np.outer(mean_a, mean_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.sqrt(np.outer(np.clip(var_a, 0, None), np.clip(var_b, 0, None)))
        return np.where(sd > 0, cov / sd, np.nan)


def cell_feature_activity(indices: np.ndarray, values: np.ndarray, row_cell: np.ndarray, n_cells: int,
                          n_features: int) -> np.ndarray:
    """``[cells, F]`` each feature's mean activation over each cell's rows (its gene positions)."""
    rows_per_cell = np.bincount(row_cell, minlength=n_cells)
    k = indices.shape[1]
    sums = sparse.csr_matrix((values.ravel().astype(np.float64), (np.repeat(row_cell, k), indices.ravel())),
                             shape=(n_cells, n_features)).toarray()
    return sums / np.maximum(rows_per_cell, 1)[:, None]


def regulon_activity(expression: np.ndarray, targets: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """Per cell, each TF's activity read from its targets' expression ``expression`` ``[cells, G]``: the mean
    z-score of its activated targets minus that of its repressed ones (``targets[tf]`` = (activated, repressed)
    column indices; a gene constant over the cells contributes 0)."""
    sd = expression.std(axis=0)
    z = np.where(sd > 0, (expression - expression.mean(axis=0)) / np.where(sd > 0, sd, 1), 0.0)
    out = {}
    for tf, (up, down) in targets.items():
        score = np.zeros(expression.shape[0])
        if len(up):
            score += z[:, up].mean(axis=1)
        if len(down):
            score -= z[:, down].mean(axis=1)
        out[tf] = score
    return pd.DataFrame(out)


def best_feature_match(activity: np.ndarray, programmes: pd.DataFrame) -> pd.DataFrame:
    """For each programme (a column of ``programmes``, ``[cells]``): the feature whose per-cell activity
    (``activity`` ``[cells, F]``) has the largest Pearson correlation with it, and that correlation (features
    constant over the cells are left out)."""
    a = activity - activity.mean(axis=0)
    a_norm = np.sqrt((a ** 2).sum(axis=0))
    rows = []
    for name, values in programmes.items():
        t = np.asarray(values, dtype=np.float64)
        t = t - t.mean()
        t_norm = np.sqrt((t ** 2).sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(a_norm > 0, (a.T @ t) / (a_norm * t_norm), np.nan) if t_norm > 0 else np.full(a.shape[1],
                                                                                                      np.nan)
        best = int(np.nanargmax(r)) if np.isfinite(r).any() else -1
        rows.append((name, best, float(r[best]) if best >= 0 else float("nan")))
    return pd.DataFrame(rows, columns=["programme", "best_feature", "r"])
