"""AnnData loading and validation: raw counts, gene identifiers, perturbation / control / cell-state columns.

Geneformer's rank-value encoding needs raw counts (it normalises by total counts itself), Ensembl gene ids
to look up its dictionaries, and the per-cell total count over *all* genes (``obs['n_counts']``, computed
here when absent). Every problem raises :class:`InputError` naming what is wrong and what to do.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

ENSEMBL_COLUMNS = ("ensembl_id", "gene_ids", "gene_id", "ensembl")
SYMBOL_COLUMNS = ("symbol", "gene_symbol", "gene_symbols", "feature_name", "gene_name")


class InputError(ValueError):
    """The user's input (file, table, column, vocabulary overlap) cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class CellData:
    """Validated cells. ``counts`` is CSR ``[cells, genes]`` of raw integer counts; ``gene_ids`` are Ensembl-style
    ids (what Geneformer's dictionaries are keyed by) and ``symbols`` gene symbols, both length ``genes``;
    ``obs`` has one row per cell and always an ``n_counts`` column (total counts over all genes)."""

    counts: sp.csr_matrix
    gene_ids: np.ndarray
    symbols: np.ndarray
    obs: pd.DataFrame
    perturbation_col: str | None = None
    control_label: str = "control"
    cell_state_col: str | None = None

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    def perturbed_genes(self) -> list[str]:
        """Symbols of perturbation targets present in the data (control label excluded)."""
        if self.perturbation_col is None:
            return []
        labels = pd.unique(self.obs[self.perturbation_col].astype(str))
        return sorted(str(x) for x in labels if x != self.control_label)


def read_h5ad(path: str | Path) -> ad.AnnData:
    """Read an .h5ad file, turning every failure into a clear :class:`InputError`."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"data file {p} does not exist")
    try:
        return ad.read_h5ad(p)
    except Exception as exc:  # h5py/anndata raise many types for a non-h5ad file
        raise InputError(f"{p} is not a readable AnnData .h5ad file ({type(exc).__name__}: {exc}). "
                         "Save your cells with adata.write_h5ad(...) and pass that file.") from exc


def _raw_counts(adata: ad.AnnData) -> sp.csr_matrix:
    """Raw counts from ``layers['counts']`` or ``X``; reject normalised or log-transformed values."""
    source = "layers['counts']" if "counts" in adata.layers else "X"
    matrix = adata.layers["counts"] if source != "X" else adata.X
    if matrix is None:
        raise InputError("the AnnData has no expression matrix in X")
    m = sp.csr_matrix(matrix)
    values = m.data[: 200_000]
    if values.size and (values < 0).any():
        raise InputError(f"{source} holds negative values; raw counts are required "
                         "(put raw UMI counts in X or layers['counts'])")
    if values.size and np.abs(values - np.round(values)).max() > 1e-6:
        raise InputError(f"{source} holds non-integer values, so it looks normalised or log-transformed; "
                         "Geneformer's rank-value encoding needs raw counts: put raw UMI counts in X or "
                         "layers['counts']")
    if m.nnz == 0:
        raise InputError(f"{source} holds no non-zero counts")
    return m


def _gene_ids_and_symbols(var: pd.DataFrame, gene_id_col: str | None,
                          symbol_to_id: Mapping[str, str] | None) -> tuple[np.ndarray, np.ndarray]:
    names = var.index.astype(str).to_numpy()
    if gene_id_col is not None:
        if gene_id_col not in var.columns:
            raise InputError(f"gene id column {gene_id_col!r} is not in var (columns: {list(var.columns)})")
        ids = var[gene_id_col].astype(str).to_numpy()
    elif np.mean([n.startswith("ENS") for n in names]) > 0.5:
        ids = names
    else:
        col = next((c for c in ENSEMBL_COLUMNS if c in var.columns), None)
        if col is not None:
            ids = var[col].astype(str).to_numpy()
        elif symbol_to_id is not None:
            ids = np.array([symbol_to_id.get(n, symbol_to_id.get(n.upper(), "")) for n in names])
        else:
            raise InputError("var names are not Ensembl ids and var has no Ensembl id column "
                             f"({', '.join(ENSEMBL_COLUMNS)}); pass --gene-id-col or a gene name dictionary")
    if ids is names:
        col = next((c for c in SYMBOL_COLUMNS if c in var.columns), None)
        symbols = var[col].astype(str).to_numpy() if col else names
        if col is None and symbol_to_id is not None:
            id_to_symbol = {v: k for k, v in symbol_to_id.items()}
            symbols = np.array([id_to_symbol.get(i, i) for i in ids])
    else:
        symbols = names
    return ids, np.char.upper(symbols.astype(str))


def from_anndata(adata: ad.AnnData, *, perturbation_col: str | None = None, control_label: str = "control",
                 cell_state_col: str | None = None, gene_id_col: str | None = None,
                 symbol_to_id: Mapping[str, str] | None = None, max_cells: int | None = None,
                 seed: int = 0) -> CellData:
    """Validate an in-memory AnnData into :class:`CellData` (the input is not modified).

    Columns named but absent are errors; ``perturbation_col`` must contain ``control_label`` and at least one
    other label with cells. ``max_cells`` subsamples cells with ``seed``.
    """
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"the AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes)")
    counts = _raw_counts(adata)
    obs = adata.obs.copy()
    for label, col in (("perturbation", perturbation_col), ("cell-state", cell_state_col)):
        if col is not None and col not in obs.columns:
            raise InputError(f"{label} column {col!r} is not in obs (columns: {list(obs.columns)}); "
                             f"pass the right column name or none")
    if perturbation_col is not None:
        labels = obs[perturbation_col].astype(str)
        if not (labels == control_label).any():
            raise InputError(f"no control cells: label {control_label!r} does not occur in obs[{perturbation_col!r}] "
                             f"(labels include {sorted(labels.unique())[:8]}); pass --control-label")
        if (labels != control_label).sum() == 0:
            raise InputError(f"obs[{perturbation_col!r}] has only control cells; no perturbation group to evaluate")
    ids, symbols = _gene_ids_and_symbols(adata.var, gene_id_col, symbol_to_id)
    if "n_counts" in obs.columns:
        obs["n_counts"] = obs["n_counts"].astype(float)
    else:
        obs["n_counts"] = np.asarray(counts.sum(axis=1)).ravel().astype(float)
    if max_cells is not None and adata.n_obs > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(adata.n_obs, max_cells, replace=False))
        counts, obs = counts[keep], obs.iloc[keep]
    return CellData(counts=counts.tocsr(), gene_ids=ids, symbols=symbols, obs=obs,
                    perturbation_col=perturbation_col, control_label=control_label, cell_state_col=cell_state_col)


def load_cells(path: str | Path, **kwargs) -> CellData:
    """Read and validate an .h5ad file (see :func:`from_anndata` for the keyword arguments)."""
    return from_anndata(read_h5ad(path), **kwargs)
