"""Per-group sufficient statistics of log1p CP10k expression (:mod:`analysis.io.expression`), from one streamed
pass over the counts.

Welch's t-test, Scanpy's log fold change, the on-target check, HVG variance and detection counts need, per group of
cells and per gene, only the cell count ``n``, ``sum x``, ``sum x**2`` and the number of cells with ``x > 0``. These
add over row blocks, so a screen that does not fit in memory (:mod:`analysis.io.backed`) costs one pass over the
disk and memory ``[groups, genes]``, and the 27 DE conditions of the sensitivity grid reuse the same pass. The
in-memory path runs the same code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .backed import row_blocks
from .expression import column_indices, log1p_cp10k


@dataclass(frozen=True)
class GroupMoments:
    """``labels`` ``[groups]``; ``n`` ``[groups]`` cells; ``sum``, ``sumsq`` ``[groups, genes]`` float64 sums of
    x and x**2, and ``detected`` ``[groups, genes]`` cells with x > 0, where x is log1p CP10k; ``gene_ids``
    ``[genes]`` the columns."""

    labels: np.ndarray
    n: np.ndarray
    sum: np.ndarray
    sumsq: np.ndarray
    detected: np.ndarray
    gene_ids: np.ndarray

    def columns(self, gene_ids: np.ndarray) -> "GroupMoments":
        """The same groups over ``gene_ids`` (each must be one of ``self.gene_ids``), in that order."""
        cols = column_indices(self.gene_ids, gene_ids)
        return GroupMoments(self.labels, self.n, self.sum[:, cols], self.sumsq[:, cols], self.detected[:, cols],
                            np.asarray(gene_ids))

    def groups(self, labels) -> "GroupMoments":
        """The rows of ``labels`` (each one of ``self.labels``), in that order."""
        row_of = {l: i for i, l in enumerate(self.labels)}
        rows = np.array([row_of[l] for l in labels], dtype=np.int64)
        return GroupMoments(self.labels[rows], self.n[rows], self.sum[rows], self.sumsq[rows], self.detected[rows],
                            self.gene_ids)

    def size_of(self, label: str) -> int:
        hit = np.nonzero(self.labels == label)[0]
        return int(self.n[hit[0]]) if hit.size else 0

    def mean(self) -> np.ndarray:
        """``[groups, genes]`` mean x."""
        return self.sum / self.n[:, None]

    def var(self, ddof: int = 1) -> np.ndarray:
        """``[groups, genes]`` variance of x (``ddof`` 1: the sample variance), clipped at 0 against rounding."""
        mean = self.mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.maximum((self.sumsq - self.n[:, None] * mean ** 2) / (self.n[:, None] - ddof), 0)

    def pooled(self) -> "GroupMoments":
        """One group, ``all``, holding every cell."""
        return GroupMoments(np.array(["all"]), self.n.sum(keepdims=True), self.sum.sum(0, keepdims=True),
                            self.sumsq.sum(0, keepdims=True), self.detected.sum(0, keepdims=True), self.gene_ids)


def group_moments(counts, n_counts: np.ndarray, labels: np.ndarray, gene_ids: np.ndarray, *,
                  block_rows: int | None = None) -> GroupMoments:
    """:class:`GroupMoments` of raw ``counts`` ``[cells, genes]`` (in-memory CSR or
    :class:`analysis.io.backed.BackedCounts`) grouped by ``labels`` ``[cells]`` (groups in sorted label order),
    normalised by ``n_counts`` ``[cells]``; ``gene_ids`` names the columns. Memory: one block of
    ``block_rows`` (:func:`analysis.io.backed.row_blocks`) plus the sums."""
    names, code = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    genes = counts.shape[1]
    total, total_sq = np.zeros((names.size, genes)), np.zeros((names.size, genes))
    detected = np.zeros((names.size, genes), dtype=np.int64)
    n_counts = np.asarray(n_counts, dtype=float)
    for start, block in row_blocks(counts, block_rows):
        stop = start + block.shape[0]
        x = log1p_cp10k(block, n_counts[start:stop], dense=False)
        member = sp.csr_matrix((np.ones(block.shape[0]), (code[start:stop], np.arange(block.shape[0]))),
                               shape=(names.size, block.shape[0]))
        total += (member @ x).toarray()
        total_sq += (member @ x.multiply(x)).toarray()
        detected += (member @ (x > 0).astype(np.float64)).toarray().astype(np.int64)
    n = np.bincount(code, minlength=names.size).astype(np.int64)
    return GroupMoments(names, n, total, total_sq, detected, np.asarray(gene_ids))


def moments_of(cells, labels: np.ndarray | None = None) -> GroupMoments:
    """:func:`group_moments` over every gene of ``cells`` (:class:`analysis.io.cells.CellData`), grouped by
    ``labels`` ``[cells]`` (default: one group, ``all``)."""
    labels = np.full(cells.n_cells, "all") if labels is None else labels
    return group_moments(cells.counts, cells.obs["n_counts"].to_numpy(dtype=float), labels, cells.gene_ids)

