"""One definition of normalised expression for every non-model quantity (correlation edges, HVGs, DE, gene-level
baselines, CSSI's expression representation): ``log1p(counts / n_counts * 10,000)`` (log1p CP10k), with ``n_counts``
the cell's total count over *all* genes (``obs['n_counts']``), as the paper's correlation baseline (section 2.3) and
perturbation analysis (section 4.3) use it."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

TARGET_SUM = 10_000


def cp10k(counts: sp.spmatrix | np.ndarray, n_counts: np.ndarray) -> sp.csr_matrix:
    """``counts`` ``[cells, genes]`` scaled to ``TARGET_SUM`` per cell by ``n_counts`` ``[cells]`` (sparse CSR)."""
    return sp.csr_matrix(sp.diags(TARGET_SUM / np.asarray(n_counts, dtype=float)) @ sp.csr_matrix(counts))


def log1p_cp10k(counts: sp.spmatrix | np.ndarray, n_counts: np.ndarray, *, dense: bool = True
                ) -> np.ndarray | sp.csr_matrix:
    """``log1p`` of :func:`cp10k`; dense ``[cells, genes]`` float64, or sparse CSR with ``dense=False``."""
    x = cp10k(counts, n_counts).log1p()
    return np.asarray(x.todense()) if dense else x


def column_indices(columns: np.ndarray, gene_ids: np.ndarray) -> np.ndarray:
    """Index into ``columns`` (a matrix's gene ids) of each of ``gene_ids``, in that order (a repeated id: its last
    column)."""
    col_of = {g: i for i, g in enumerate(columns)}
    return np.array([col_of[g] for g in gene_ids], dtype=np.int64)


def expression_matrix(cells, gene_ids: np.ndarray, *, dense: bool = True) -> np.ndarray | sp.csr_matrix:
    """log1p CP10k ``[cells, len(gene_ids)]`` of the given genes of ``cells`` (``analysis.io.cells.CellData``)."""
    cols = column_indices(cells.gene_ids, gene_ids)
    return log1p_cp10k(cells.counts[:, cols], cells.obs["n_counts"].to_numpy(dtype=float), dense=dense)
