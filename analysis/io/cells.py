"""AnnData loading and validation: raw counts, gene identifiers, perturbation / control / cell-state columns.

Both model families tokenise raw counts themselves (Geneformer normalises by total counts and gene medians; scGPT
bins each cell's values), Geneformer looks genes up by Ensembl id and scGPT by symbol, and the per-cell total count
over *all* genes (``obs['n_counts']``) is computed here when absent. Every stored count is checked (finite,
non-negative, integer). Every problem raises :class:`InputError` naming what is wrong and what to do.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError

ENSEMBL_COLUMNS = ("ensembl_id", "gene_ids", "gene_id", "ensembl")
SYMBOL_COLUMNS = ("symbol", "gene_symbol", "gene_symbols", "feature_name", "gene_name")


@dataclass(frozen=True)
class CellData:
    """Validated cells. ``counts`` is CSR ``[cells, genes]`` of raw integer counts; ``gene_ids`` are Ensembl-style
    ids (what Geneformer's dictionaries are keyed by; the symbols themselves when the data has none and the model
    does not need them), ``symbols`` upper-cased gene symbols (how reference networks name genes) and
    ``raw_symbols`` the symbols as the data (or the symbol table) writes them (scGPT matches them case-sensitively),
    all length ``genes``; ``obs`` has one row per cell and always an ``n_counts`` column (total counts over all
    genes)."""

    counts: sp.csr_matrix
    gene_ids: np.ndarray
    symbols: np.ndarray
    obs: pd.DataFrame
    raw_symbols: np.ndarray | None = None
    perturbation_col: str | None = None
    control_label: str = "control"
    cell_state_col: str | None = None

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    def subset(self, idx: np.ndarray) -> "CellData":
        """Cells ``idx`` (indices or a boolean mask), every gene kept."""
        return dataclasses.replace(self, counts=self.counts[idx], obs=self.obs.iloc[idx])

    def controls(self) -> "CellData":
        """The control cells only (the cells the correlation edges and gene-level baselines are computed on)."""
        return self.subset(self.obs[self.perturbation_col].astype(str).to_numpy() == self.control_label)

    def select(self, selection: str) -> np.ndarray:
        """Indices of the cells attention and ablation run on (``extraction.cells``): ``control`` (the paper's
        choice, section 2.5: the control cells, so attention sees no perturbation effect it is then scored
        against, and is computed on the cells the correlation edges and gene-level baselines use; every cell when
        the data has no perturbation column), ``all``, or one perturbation label (that condition's cells)."""
        if selection == "all" or (selection == "control" and self.perturbation_col is None):
            return np.arange(self.n_cells)
        if self.perturbation_col is None:
            raise InputError(f"extraction.cells = {selection!r} names a condition, but the data has no perturbation "
                             "column; use 'all' or pass --perturbation-col")
        labels = self.obs[self.perturbation_col].astype(str).to_numpy()
        label = self.control_label if selection == "control" else selection
        idx = np.nonzero(labels == label)[0]
        if idx.size == 0:
            raise InputError(f"extraction.cells = {selection!r}: no cell has that label in obs[{self.perturbation_col!r}]"
                             f" (labels include {sorted(pd.unique(labels))[:8]}); use 'control', 'all' or a label")
        return idx

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
    values = m.data                          # every stored value: one vectorised pass
    if values.size and not np.isfinite(values).all():
        rows = np.unique(np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))[~np.isfinite(values)])
        raise InputError(f"{source} holds {int((~np.isfinite(values)).sum())} NaN or infinite value(s) in "
                         f"{rows.size} cell(s) (first: {adata.obs_names[rows[0]]!r}); raw counts are required: "
                         "fix or drop those cells")
    if values.size and (values < 0).any():
        raise InputError(f"{source} holds {int((values < 0).sum())} negative value(s); raw counts are required "
                         "(put raw UMI counts in X or layers['counts'])")
    if values.size and np.abs(values - np.round(values)).max() > 1e-6:
        raise InputError(f"{source} holds non-integer values, so it looks normalised or log-transformed; the "
                         "models tokenise raw counts: put raw UMI counts in X or layers['counts']")
    if m.nnz == 0:
        raise InputError(f"{source} holds no non-zero counts")
    return m


def _gene_ids_and_symbols(var: pd.DataFrame, gene_id_col: str | None, symbol_to_id: Mapping[str, str] | None,
                          require_ensembl: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Ensembl-style ids, upper-cased symbols, symbols as written) per var row (see :class:`CellData`)."""
    names = var.index.astype(str).to_numpy()
    names_are_ids = False
    if gene_id_col is not None:
        if gene_id_col not in var.columns:
            raise InputError(f"gene id column {gene_id_col!r} is not in var (columns: {list(var.columns)})")
        ids = var[gene_id_col].astype(str).to_numpy()
    elif np.mean([n.startswith("ENS") for n in names]) > 0.5:
        ids, names_are_ids = names, True
    else:
        col = next((c for c in ENSEMBL_COLUMNS if c in var.columns), None)
        if col is not None:
            ids = var[col].astype(str).to_numpy()
        elif symbol_to_id:
            ids = np.array([symbol_to_id.get(n, symbol_to_id.get(n.upper(), "")) for n in names])
        elif not require_ensembl:
            ids = names
        else:
            raise InputError("var names are not Ensembl ids and var has no Ensembl id column "
                             f"({', '.join(ENSEMBL_COLUMNS)}); pass --gene-id-col or a gene name dictionary")
    if names_are_ids:
        col = next((c for c in SYMBOL_COLUMNS if c in var.columns), None)
        symbols = var[col].astype(str).to_numpy() if col else names
        if col is None and symbol_to_id:
            id_to_symbol = {v: k for k, v in sorted(symbol_to_id.items(), reverse=True)}
            symbols = np.array([id_to_symbol.get(i, i) for i in ids])
    else:
        symbols = names
    return ids, np.char.upper(symbols.astype(str)), symbols.astype(str)


def from_anndata(adata: ad.AnnData, *, perturbation_col: str | None = None, control_label: str = "control",
                 cell_state_col: str | None = None, gene_id_col: str | None = None,
                 symbol_to_id: Mapping[str, str] | None = None, require_ensembl: bool = True,
                 max_cells: int | None = None, seed: int = 0) -> CellData:
    """Validate an in-memory AnnData into :class:`CellData` (the input is not modified).

    Columns named but absent are errors; ``perturbation_col`` must contain ``control_label`` and at least one
    other label with cells, and no cell without a label. Without ``require_ensembl`` (a model that matches genes by
    symbol), symbol-keyed data with no Ensembl column keeps the symbols as ids. ``max_cells`` subsamples cells with
    ``seed``.
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
        missing = obs[perturbation_col].isna()
        if missing.any():
            raise InputError(f"{int(missing.sum())} cell(s) have no label in obs[{perturbation_col!r}] (first: "
                             f"{obs.index[missing.to_numpy()][0]!r}); label control cells {control_label!r} and drop "
                             "cells whose perturbation is unknown")
        labels = obs[perturbation_col].astype(str)
        if not (labels == control_label).any():
            raise InputError(f"no control cells: label {control_label!r} does not occur in obs[{perturbation_col!r}] "
                             f"(labels include {sorted(labels.unique())[:8]}); pass --control-label")
        if (labels != control_label).sum() == 0:
            raise InputError(f"obs[{perturbation_col!r}] has only control cells; no perturbation group to evaluate")
    ids, symbols, raw_symbols = _gene_ids_and_symbols(adata.var, gene_id_col, symbol_to_id, require_ensembl)
    if "n_counts" in obs.columns:
        obs["n_counts"] = obs["n_counts"].astype(float)
    else:
        obs["n_counts"] = np.asarray(counts.sum(axis=1)).ravel().astype(float)
    if max_cells is not None and adata.n_obs > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(adata.n_obs, max_cells, replace=False))
        counts, obs = counts[keep], obs.iloc[keep]
    return CellData(counts=counts.tocsr(), gene_ids=ids, symbols=symbols, obs=obs, raw_symbols=raw_symbols,
                    perturbation_col=perturbation_col, control_label=control_label, cell_state_col=cell_state_col)


def load_cells(path: str | Path, **kwargs) -> CellData:
    """Read and validate an .h5ad file (see :func:`from_anndata` for the keyword arguments)."""
    return from_anndata(read_h5ad(path), **kwargs)
