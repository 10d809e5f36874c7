"""Raw counts left on disk: an .h5ad's ``layers['counts']`` (or ``X``) read in row blocks, never whole.

A genome-scale screen (Replogle's K562 essential screen: ~300,000 cells x 8,000 genes at ~35% density, ~7 GB as
CSR) does not fit beside the float64 temporaries that DE and validation make, so :func:`analysis.io.cells.load_cells`
keeps counts larger than :data:`IN_MEMORY_LIMIT` here. Everything that needs every cell streams
:meth:`BackedCounts.row_blocks`; what needs a few cells (the controls, one perturbation group, the cells attention runs
on) reads those rows into memory with :meth:`BackedCounts.rows`. Stored CSR (anndata's ``csr_matrix`` encoding) and
dense arrays are read; CSC is refused (a row of it touches every column's block).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import scipy.sparse as sp
from anndata.io import sparse_dataset

from ..errors import InputError

IN_MEMORY_LIMIT = 2 * 1024 ** 3      # bytes of stored counts above which load_cells leaves them on disk
BLOCK_ROWS = 8_192                   # rows per block when streaming


def stored_bytes(element: h5py.Group | h5py.Dataset) -> int:
    """Bytes an h5ad matrix element holds in memory once read (data + indices for sparse)."""
    if isinstance(element, h5py.Dataset):
        return int(element.size * element.dtype.itemsize)
    return int(sum(element[k].size * element[k].dtype.itemsize for k in ("data", "indices", "indptr")))


class BackedCounts:
    """``[cells, genes]`` counts in an open .h5ad file: ``element`` is ``X`` or ``layers/counts`` (CSR group or dense
    dataset). Quacks like the CSR it stands for where the library reads counts: ``shape``, ``[rows, cols]`` (rows
    read block by block, columns taken per block, so memory is the size of the answer) and :meth:`row_blocks`."""

    def __init__(self, path: str | Path, element: str, block_rows: int | None = None):
        self.path, self.element, self.block_rows = Path(path), element, block_rows or BLOCK_ROWS
        self._file = h5py.File(self.path, "r")
        node = self._file[element]
        if isinstance(node, h5py.Dataset):
            self._matrix, self.shape = node, tuple(node.shape)
        else:
            encoding = node.attrs.get("encoding-type", "")
            if encoding != "csr_matrix":
                raise InputError(f"{self.path}: {element} is stored as {encoding or 'an unknown encoding'}; counts too "
                                 "large to load must be CSR to be read by rows: adata.X = scipy.sparse.csr_matrix("
                                 "adata.X); adata.write_h5ad(...)")
            self._matrix = sparse_dataset(node)
            self.shape = tuple(int(s) for s in self._matrix.shape)

    def __getstate__(self) -> dict:     # an open h5py file does not pickle; a copy reopens the file
        return {"path": self.path, "element": self.element, "block_rows": self.block_rows}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["element"], state["block_rows"])

    def _read(self, start: int, stop: int) -> sp.csr_matrix:
        block = self._matrix[start:stop]
        return block if sp.issparse(block) and block.format == "csr" else sp.csr_matrix(block)

    def row_blocks(self, block_rows: int | None = None) -> Iterator[tuple[int, sp.csr_matrix]]:
        """``(first_row, block)`` over every row in order; ``block`` is in-memory CSR ``[<= block_rows, genes]``."""
        step = block_rows or self.block_rows
        for start in range(0, self.shape[0], step):
            yield start, self._read(start, min(start + step, self.shape[0]))

    def rows(self, idx: np.ndarray) -> sp.csr_matrix:
        """Rows ``idx`` (indices in any order, repeats allowed, or a boolean mask) as in-memory CSR, in the order
        given; the file is asked for each distinct row once, in increasing order (what HDF5 reads fast)."""
        idx = np.asarray(idx)
        idx = np.nonzero(idx)[0] if idx.dtype == bool else idx.astype(np.int64)
        if idx.size == 0:
            return sp.csr_matrix((0, self.shape[1]), dtype=self._matrix.dtype)
        distinct, position = np.unique(idx, return_inverse=True)
        block = self._matrix[distinct]
        return (block if sp.issparse(block) else sp.csr_matrix(block)).tocsr()[position]

    def __getitem__(self, key) -> sp.csr_matrix:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        if isinstance(rows, slice) and rows == slice(None):
            return sp.vstack([block[:, cols] for _, block in self.row_blocks()], format="csr")
        if isinstance(rows, slice):
            rows = np.arange(self.shape[0])[rows]
        return self.rows(rows)[:, cols]

    def __repr__(self) -> str:
        return f"BackedCounts({self.path.name}:{self.element}, shape={self.shape})"


def row_blocks(counts: sp.csr_matrix | BackedCounts, block_rows: int | None = None
               ) -> Iterator[tuple[int, sp.csr_matrix]]:
    """``(first_row, CSR block)`` over the rows of in-memory CSR or :class:`BackedCounts` alike, so the streaming
    code is the only code: an in-memory matrix is sliced, a backed one read (``block_rows`` default: the backed
    matrix's own, else :data:`BLOCK_ROWS`)."""
    if isinstance(counts, BackedCounts):
        yield from counts.row_blocks(block_rows)
        return
    block_rows = block_rows or BLOCK_ROWS
    for start in range(0, counts.shape[0], block_rows):
        yield start, counts[start:start + block_rows]


def take_rows(counts: sp.csr_matrix | BackedCounts, idx: np.ndarray) -> sp.csr_matrix:
    """Rows ``idx`` (indices or a boolean mask) of in-memory CSR or :class:`BackedCounts`, as in-memory CSR."""
    return counts.rows(idx) if isinstance(counts, BackedCounts) else counts[idx]
