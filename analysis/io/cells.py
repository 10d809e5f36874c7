"""AnnData loading and validation: raw counts, gene identifiers, perturbation / control / cell-state columns.

Both model families tokenise raw counts themselves (Geneformer normalises by total counts and gene medians; scGPT
bins each cell's values), Geneformer looks genes up by Ensembl id and scGPT by symbol, and the per-cell total count
over *all* genes (``obs['n_counts']``) is computed here when absent. Every stored count is checked (finite,
non-negative, integer) in one pass over row blocks, so a screen too large to hold is validated from disk
(:mod:`analysis.io.backed`). Every problem raises :class:`InputError` naming what is wrong and what to do.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Mapping, Sequence

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from anndata.io import read_elem

from ..errors import InputError
from . import backed as on_disk
from .backed import BackedCounts, row_blocks, stored_bytes, take_rows
from .formats import format_of, read_cells_file
from .moments import GroupMoments, moments_of

COUNTS_HINT = ("put raw UMI counts in X, layers['counts'] or raw.X, or say where they are with --counts-layer (X, raw "
               "or a layer's name); log1p(CP10k) values are turned back into counts when obs holds each cell's "
               "total count (n_counts, total_counts or nCount_RNA)")
ENSEMBL_COLUMNS = ("ensembl_id", "gene_ids", "gene_id", "ensembl")
SYMBOL_COLUMNS = ("symbol", "gene_symbol", "gene_symbols", "feature_name", "gene_name")


@dataclass(frozen=True)
class CellData:
    """Validated cells. ``counts`` is CSR ``[cells, genes]`` of raw integer counts (or, for a screen too large to
    hold, :class:`analysis.io.backed.BackedCounts` on disk: every reader goes through ``row_blocks`` / ``take_rows``
    or ``counts[:, cols]``); ``gene_ids`` are Ensembl-style
    ids (what Geneformer's dictionaries are keyed by; the symbols themselves when the data has none and the model
    does not need them), ``symbols`` upper-cased gene symbols (how reference networks name genes) and
    ``raw_symbols`` the symbols as the data (or the symbol table) writes them (scGPT matches them case-sensitively),
    all length ``genes``; ``obs`` has one row per cell and always an ``n_counts`` column (total counts over all
    genes)."""

    counts: sp.csr_matrix | BackedCounts
    gene_ids: np.ndarray
    symbols: np.ndarray
    obs: pd.DataFrame
    raw_symbols: np.ndarray | None = None
    perturbation_col: str | None = None
    control_label: str = "control"
    cell_state_col: str | None = None
    counts_source: str = "X"           # which matrix held the counts and why (:func:`choose_counts`)

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    def subset(self, idx: np.ndarray) -> "CellData":
        """Cells ``idx`` (indices or a boolean mask), every gene kept."""
        return dataclasses.replace(self, counts=take_rows(self.counts, idx), obs=self.obs.iloc[idx])

    @cached_property
    def moments(self) -> GroupMoments:
        """Per-group log1p CP10k moments over every gene (:mod:`analysis.io.moments`), one group per perturbation
        label (one group, ``all``, without a perturbation column): one streamed pass, made once and shared by DE, the
        on-target check, HVG selection and detection counts."""
        labels = None if self.perturbation_col is None else self.obs[self.perturbation_col].astype(str).to_numpy()
        return moments_of(self, labels)

    def controls(self) -> "CellData":
        """The control cells only (the cells the correlation edges and gene-level baselines are computed on)."""
        return self.subset(self.obs[self.perturbation_col].astype(str).to_numpy() == self.control_label)

    def select(self, selection: str, n_cells: int | None = None, seed: int = 0) -> np.ndarray:
        """Indices of the cells attention and ablation run on (``extraction.cells``): ``control`` (the paper's
        choice, section 2.5: the control cells, so attention sees no perturbation effect it is then scored
        against, and is computed on the cells the correlation edges and gene-level baselines use; every cell when
        the data has no perturbation column), ``all``, or one perturbation label (that condition's cells); at most
        ``n_cells`` of them (``extraction.n_cells``), drawn once with ``seed`` and sorted."""
        chosen = self._selected(selection)
        if n_cells is None or chosen.size <= n_cells:
            return chosen
        return np.sort(np.random.default_rng(seed).choice(chosen, n_cells, replace=False))

    def _selected(self, selection: str) -> np.ndarray:
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
    p = _existing(path)
    try:
        return ad.read_h5ad(p)
    except Exception as exc:  # h5py/anndata raise many types for a non-h5ad file
        raise _unreadable(p, exc) from exc


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"data file {p} does not exist")
    return p


def _unreadable(p: Path, exc: Exception) -> InputError:
    return InputError(f"{p} is not a readable AnnData .h5ad file ({type(exc).__name__}: {exc}). "
                      "Save your cells with adata.write_h5ad(...) and pass that file.")


PROBE_ROWS = 1024     # rows read to tell integer counts from normalised values before choosing a matrix


def choose_counts(requested: str | None, layers: Sequence[str], has_raw: bool,
                  integer_at: Callable[[str], bool]) -> tuple[str, str]:
    """Where the raw counts are, as ``(location, why)``: location ``X``, ``raw.X`` or ``layers['<name>']``.
    ``requested`` (``--counts-layer``: ``X``, ``raw`` / ``raw.X``, or a layer's name) wins; otherwise
    ``layers['counts']`` (the scverse convention), else ``raw.X`` when ``X`` holds non-integer values and ``raw.X``
    integers (CELLxGENE / Census files: normalised ``X``, counts in ``.raw``), else ``X`` (then validated, and refused
    with :data:`COUNTS_HINT` when it holds no counts). ``integer_at(location)``: whether the first
    :data:`PROBE_ROWS` rows of that matrix hold only integers."""
    if requested is not None:
        if requested == "X":
            return "X", "--counts-layer X"
        if requested in ("raw", "raw.X", "raw/X"):
            if not has_raw:
                raise InputError(f"--counts-layer {requested}: the file has no raw.X ({_matrices(layers, has_raw)})")
            return "raw.X", f"--counts-layer {requested}"
        name = requested.removeprefix("layers/")
        if name not in layers:
            raise InputError(f"--counts-layer {requested}: the file has no such matrix ({_matrices(layers, has_raw)})")
        return f"layers['{name}']", f"--counts-layer {requested}"
    if "counts" in layers:
        return "layers['counts']", "layers['counts'] is where scverse keeps raw counts"
    if has_raw and not integer_at("X") and integer_at("raw.X"):
        return "raw.X", "X holds non-integer (normalised) values and raw.X integers, as CELLxGENE and Census files do"
    return "X", "no layers['counts']" + (", and X holds integers" if has_raw else " and no raw.X")


def _matrices(layers: Sequence[str], has_raw: bool) -> str:
    return "it has X" + (", raw.X" if has_raw else "") + "".join(f", layers['{n}']" for n in layers)


def _integer_rows(matrix) -> bool:
    """Whether the first :data:`PROBE_ROWS` rows of ``matrix`` (dense, sparse or on disk) hold only integers."""
    block = matrix[:min(PROBE_ROWS, matrix.shape[0])]
    values = block.data if sp.issparse(block) else np.asarray(block).ravel()
    return bool(np.isfinite(values).all() and np.all(values == np.round(values)))


def _matrix_of(adata: ad.AnnData, location: str):
    if location == "X":
        return adata.X
    if location == "raw.X":
        return adata.raw.X
    return adata.layers[_layer_name(location)]


def _layer_name(location: str) -> str:
    """``name`` of the location ``layers['name']``."""
    return location[len("layers['"):-len("']")]


def _raw_var(var: pd.DataFrame, raw_var: pd.DataFrame) -> pd.DataFrame:
    """The genes of raw.X: ``raw.var``, with ``var``'s columns (symbols, ids) where it lacks them (CELLxGENE keeps
    annotations in ``var`` and only the index in ``raw.var``)."""
    if raw_var.index.equals(var.index):
        return var
    return raw_var.combine_first(var.reindex(raw_var.index))[list(dict.fromkeys([*raw_var.columns, *var.columns]))]


def _raw_counts(adata: ad.AnnData, requested: str | None) -> tuple[sp.csr_matrix, pd.DataFrame, str, str]:
    """The in-memory counts as CSR, their genes (``var``), where they came from and why (:func:`choose_counts`)."""
    has_raw = adata.raw is not None
    location, why = choose_counts(requested, list(adata.layers.keys()), has_raw,
                                  lambda loc: _integer_rows(_matrix_of(adata, loc)))
    matrix = _matrix_of(adata, location)
    if matrix is None:
        raise InputError("the AnnData has no expression matrix in X")
    var = _raw_var(adata.var, adata.raw.var) if location == "raw.X" else adata.var
    matrix = sp.csr_matrix(matrix)
    if requested is None and location == "X" and not _integer_rows(matrix):
        recovered = recover_counts(matrix, adata.obs)
        if recovered is not None:
            counts, column, target = recovered
            return counts, var, "X", (f"recovered: X is log1p of counts per {target:,.0f}, and expm1(X) x "
                                      f"obs['{column}'] / {target:,.0f} gives integers")
    return matrix, var, location, why


TOTAL_COLUMNS = ("n_counts", "total_counts", "nCount_RNA")   # scanpy, scanpy's QC metrics, Seurat
NORMALISATION_TARGETS = (1e4, 1e6)                            # scanpy's default CP10k, and CPM
RECOVERY_TOLERANCE = 0.01      # |recovered - nearest integer|, well above float32 rounding of log1p values


def recover_counts(x: sp.csr_matrix, obs: pd.DataFrame) -> tuple[sp.csr_matrix, str, float] | None:
    """Integer counts from log-normalised ``x`` ``[cells, genes]`` (``log1p(counts / total x target)``, scanpy's
    ``normalize_total`` + ``log1p``) and each cell's total count before normalisation in ``obs`` (a column of
    :data:`TOTAL_COLUMNS`), as ``(counts, column, target)`` when every recovered value is within
    :data:`RECOVERY_TOLERANCE` of a positive integer for one of :data:`NORMALISATION_TARGETS`; None otherwise (no
    totals, another transformation, or totals that are not the ones normalised by)."""
    column = next((c for c in TOTAL_COLUMNS if c in obs.columns), None)
    if column is None or x.nnz == 0:
        return None
    totals = pd.to_numeric(obs[column], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(totals).all() or (totals <= 0).any():
        return None
    per_value = np.repeat(totals, np.diff(x.indptr))
    for target in NORMALISATION_TARGETS:
        values = np.expm1(x.data.astype(np.float64)) * per_value / target
        rounded = np.round(values)
        if np.all(rounded >= 1) and np.abs(values - rounded).max() <= RECOVERY_TOLERANCE:
            return sp.csr_matrix((rounded, x.indices, x.indptr), shape=x.shape), column, target
    return None


def _check_counts(counts: sp.csr_matrix | BackedCounts, source: str, obs_names: pd.Index) -> np.ndarray:
    """Reject normalised or log-transformed values (NaN / infinite, negative, non-integer, no non-zero count), and
    integer-valued normalisations (:func:`_check_integer_normalisation`, :func:`_check_rounded_logs`), in one
    streamed pass over row blocks (temporaries the size of one block); returns every cell's total count ``[cells]``
    from the same pass."""
    totals = np.zeros(counts.shape[0])
    cell_max = np.zeros(counts.shape[0])
    value_counts = np.zeros(ROUNDED_LOG_MAX + 2, dtype=np.int64)   # non-zero values 1..20, then "21 or more"
    n_bad = n_negative = nnz = 0
    bad_rows: list[np.ndarray] = []
    non_integer = False
    divisor = 0
    for start, block in row_blocks(counts):
        values = block.data
        nnz += int(np.count_nonzero(values))
        finite = np.isfinite(values)
        if not finite.all():
            n_bad += int((~finite).sum())
            bad_rows.append(start + np.unique(np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))[~finite]))
            continue
        n_negative += int((values < 0).sum())
        non_integer = non_integer or bool(values.size and np.abs(values - np.round(values)).max() > 1e-6)
        if not non_integer and values.size and divisor != 1:
            divisor = int(np.gcd.reduce(np.append(np.round(values).astype(np.int64), divisor)))
        totals[start:start + block.shape[0]] = np.asarray(block.sum(axis=1)).ravel()
        cell_max[start:start + block.shape[0]] = block.max(axis=1).toarray().ravel()
        value_counts += np.bincount(np.clip(np.round(values), 0, ROUNDED_LOG_MAX + 1).astype(np.int64),
                                    minlength=ROUNDED_LOG_MAX + 2)
    if n_bad:
        rows = np.concatenate(bad_rows)
        raise InputError(f"{source} holds {n_bad} NaN or infinite value(s) in {rows.size} cell(s) (first: "
                         f"{obs_names[rows[0]]!r}); raw counts are required: fix or drop those cells")
    if n_negative:
        raise InputError(f"{source} holds {n_negative} negative value(s); raw counts are required: {COUNTS_HINT}")
    if non_integer:
        raise InputError(f"{source} holds non-integer values, so it looks normalised or log-transformed; the "
                         f"models tokenise raw counts: {COUNTS_HINT}")
    if nnz == 0:
        raise InputError(f"{source} holds no non-zero counts")
    _check_integer_normalisation(totals, divisor, source)
    _check_rounded_logs(cell_max, totals, value_counts[1:], counts.shape[1], source)
    return totals


NORMALISED_TOTALS = (1e4, 1e5, 1e6)   # CP10k, CP100k, CPM


def _check_integer_normalisation(totals: np.ndarray, divisor: int, source: str) -> None:
    """Integer values that are not raw counts: every non-zero value a multiple of one number above 1 (scaled
    counts: raw UMI data holds 1s), or every cell's total within [0.5 T, 1.05 T] of a normalisation target T
    (:data:`NORMALISED_TOTALS`, floored or rounded CP10k / CPM) with little spread (coefficient of variation under
    0.1; raw UMI totals vary several-fold between cells). Checked from 20 cells up."""
    if divisor > 1:
        raise InputError(f"{source}: every non-zero value is a multiple of {divisor}, so it looks scaled, not raw "
                         f"UMI counts (raw counts hold 1s); {COUNTS_HINT}")
    if totals.size < 20 or totals.mean() <= 0:
        return
    spread = totals.std() / totals.mean()
    for target in NORMALISED_TOTALS:
        if spread < 0.1 and totals.min() >= 0.5 * target and totals.max() <= 1.05 * target:
            raise InputError(f"{source}: every cell's total is between {totals.min():,.0f} and {totals.max():,.0f} "
                             f"(near {target:,.0f}), so it looks normalised to a fixed total and made integer "
                             f"(floored or rounded), not raw UMI counts; {COUNTS_HINT}")


ROUNDED_LOG_MAX = 20            # a rounded log of any normalisation up to 1e6 per cell (log2(1 + 1e6) = 19.9)
MIN_TOP_GENE_SHARE = 0.005      # a real cell's most-counted gene: >= 0.53% of its UMIs in 571 sc_mixology cells


def _check_rounded_logs(cell_max: np.ndarray, totals: np.ndarray, value_counts: np.ndarray, n_genes: int,
                        source: str) -> None:
    """Rounded log values (``round(log1p(CP10k))``, ``round(log2(1 + CPM))``): every value at most
    :data:`ROUNDED_LOG_MAX`, with either a most frequent non-zero value above 1 (a count of 1 scaled to CP10k or CPM
    and logged rounds to 2 or more; in raw UMI counts that shallow, 1 is the commonest value) or the median cell's
    largest value under :data:`MIN_TOP_GENE_SHARE` of its total (a log scale flattens the dominant genes that every
    real transcriptome has). ``cell_max`` and ``totals`` are ``[cells]``; ``value_counts[v - 1]`` counts the
    non-zero values equal to ``v`` (1..20). Checked from 20 cells and 100 genes up (a transcriptome, not a toy
    panel whose few genes are all well expressed)."""
    if totals.size < 20 or n_genes < 100 or cell_max.max() > ROUNDED_LOG_MAX:
        return
    expressed = totals > 0
    top_share = float(np.median(cell_max[expressed] / totals[expressed]))
    commonest = int(np.argmax(value_counts)) + 1
    if commonest > 1 or top_share < MIN_TOP_GENE_SHARE:
        raise InputError(f"{source}: no value exceeds {cell_max.max():.0f}, the commonest non-zero value is "
                         f"{commonest} and the median cell's largest value is {top_share:.2%} of its total, so it "
                         "looks like rounded log-normalised values, not raw UMI counts (shallow raw counts are "
                         f"mostly 1s, and every real cell has a dominant gene); {COUNTS_HINT}")


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


def from_anndata(adata: ad.AnnData, *, counts_layer: str | None = None, **kwargs) -> CellData:
    """Validate an in-memory AnnData into :class:`CellData` (the input is not modified); ``counts_layer`` as
    :func:`choose_counts`' ``requested``; other keyword arguments as :func:`validated`."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"the AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes)")
    counts, var, source, why = _raw_counts(adata, counts_layer)
    return validated(counts, source, adata.obs, var, why=why, **kwargs)


MISSING_SPELLINGS = frozenset({"", "nan", "none", "null", "na", "n/a", "missing", "unknown", "?"})


def _rows(mask: np.ndarray, index: pd.Index) -> str:
    """``"3 cell(s) (first: 'c7', 'c9')"`` for the rows of ``mask``."""
    names = list(index[np.asarray(mask)][:2])
    return f"{int(np.sum(mask))} cell(s) (first: {', '.join(repr(str(n)) for n in names)})"


def _check_labels(labels: pd.Series, column: str, control_label: str) -> None:
    """Refuse perturbation labels that would silently become groups or move cells: blank or "missing" spellings
    (they would be a perturbation named "nan"), and labels that differ from the control label only in case or
    surrounding whitespace (those control cells would leave the control set)."""
    norm = labels.str.strip().str.lower()
    blank = norm.isin(MISSING_SPELLINGS).to_numpy() & (labels != control_label).to_numpy()
    if blank.any():
        raise InputError(f"{_rows(blank, labels.index)} in obs[{column!r}] have a blank or missing-value label "
                         f"({sorted(labels[blank].unique())[:4]}); give them their perturbed gene or the control "
                         f"label {control_label!r}, or drop them")
    near = (norm == control_label.strip().lower()).to_numpy() & (labels != control_label).to_numpy()
    if near.any():
        raise InputError(f"{_rows(near, labels.index)} in obs[{column!r}] are labelled "
                         f"{sorted(labels[near].unique())[:4]}, which differs from the control label "
                         f"{control_label!r} only in case or whitespace; fix the labels or pass --control-label")


def _checked_totals(column: pd.Series) -> pd.Series:
    """``obs['n_counts']`` (each cell's total counts over all genes, the normalisation's denominator) as floats;
    an InputError names the cells whose value is not a number, not finite, or not positive."""
    values = pd.to_numeric(column, errors="coerce").astype(float)
    bad = ~np.isfinite(values.to_numpy()) | (values.to_numpy() <= 0)
    if bad.any():
        raise InputError(f"obs['n_counts'] (total counts per cell) is not a positive finite number for "
                         f"{_rows(bad, column.index)}; fix the column or delete it (it is then computed from the "
                         "counts)")
    return values


def validated(counts: sp.csr_matrix | BackedCounts, source: str, obs: pd.DataFrame, var: pd.DataFrame, *,
              why: str = "", perturbation_col: str | None = None, control_label: str = "control", cell_state_col: str | None = None,
              gene_id_col: str | None = None, symbol_to_id: Mapping[str, str] | None = None,
              require_ensembl: bool = True, max_cells: int | None = None, seed: int = 0) -> CellData:
    """Check raw ``counts`` ``[cells, genes]`` (in memory or on disk; ``source`` names them in errors) with their
    ``obs`` and ``var`` and return :class:`CellData`; ``why`` says why that matrix was chosen.

    Columns named but absent are errors; ``perturbation_col`` must contain ``control_label`` and at least one
    other label with cells, and no cell without a label. Without ``require_ensembl`` (a model that matches genes by
    symbol), symbol-keyed data with no Ensembl column keeps the symbols as ids. ``max_cells`` subsamples cells with
    ``seed`` (read into memory).
    """
    obs = obs.copy()
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
        _check_labels(labels, perturbation_col, control_label)
        if not (labels == control_label).any():
            raise InputError(f"no control cells: label {control_label!r} does not occur in obs[{perturbation_col!r}] "
                             f"(labels include {sorted(labels.unique())[:8]}); pass --control-label")
        if (labels != control_label).sum() == 0:
            raise InputError(f"obs[{perturbation_col!r}] has only control cells; no perturbation group to evaluate")
    ids, symbols, raw_symbols = _gene_ids_and_symbols(var, gene_id_col, symbol_to_id, require_ensembl)
    totals = _check_counts(counts, source, obs.index)
    obs["n_counts"] = _checked_totals(obs["n_counts"]) if "n_counts" in obs.columns else totals
    if max_cells is not None and counts.shape[0] > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(counts.shape[0], max_cells, replace=False))
        counts, obs = take_rows(counts, keep), obs.iloc[keep]
    return CellData(counts=counts, gene_ids=ids, symbols=symbols, obs=obs, raw_symbols=raw_symbols,
                    perturbation_col=perturbation_col, control_label=control_label, cell_state_col=cell_state_col,
                    counts_source=f"{source} ({why})" if why else source)


def _element(location: str) -> str:
    """The HDF5 path of a :func:`choose_counts` location."""
    return {"X": "X", "raw.X": "raw/X"}.get(location) or f"layers/{_layer_name(location)}"


def load_cells(path: str | Path, *, backed: bool | None = None, counts_layer: str | None = None,
               **kwargs) -> CellData:
    """Read and validate a cell file (an .h5ad, or a 10x .h5, .loom or .zarr: :mod:`analysis.io.formats`): the
    counts where :func:`choose_counts` finds them (``counts_layer`` as its
    ``requested``), other keyword arguments as :func:`validated`. ``backed``: leave the counts on disk
    (:class:`analysis.io.backed.BackedCounts`, read in row blocks; ``obs`` and ``var`` are read whole); None
    (default) does so when they would take more than ``IN_MEMORY_LIMIT`` bytes in memory. Results are the same
    either way."""
    kind = format_of(Path(path))
    if kind is not None:                    # 10x .h5, .loom, .zarr: read whole, through their own readers
        if not Path(path).exists():
            raise InputError(f"data file {path} does not exist")
        cells = from_anndata(read_cells_file(Path(path)), counts_layer=counts_layer, **kwargs)
        return dataclasses.replace(cells, counts_source=f"{cells.counts_source}, from a {kind} file")
    p = _existing(path)
    try:
        with h5py.File(p, "r") as f:
            layers = list(f["layers"].keys()) if "layers" in f else []
            has_raw = "raw" in f and "X" in f["raw"]
            if "X" not in f and not layers and not has_raw:
                raise InputError("the AnnData has no expression matrix in X")
            location, why = choose_counts(counts_layer, layers, has_raw,
                                          lambda loc: _integer_rows(BackedCounts(p, _element(loc))))
            element = _element(location)
            keep_on_disk = stored_bytes(f[element]) > on_disk.IN_MEMORY_LIMIT if backed is None else backed
            if keep_on_disk:
                obs, var = read_elem(f["obs"]), read_elem(f["var"])
                if location == "raw.X":
                    var = _raw_var(var, read_elem(f["raw/var"]))
    except (OSError, KeyError, ValueError, TypeError) as exc:   # not HDF5, or not anndata's layout
        raise _unreadable(p, exc) from exc
    if not keep_on_disk:
        return from_anndata(read_h5ad(p), counts_layer=counts_layer, **kwargs)
    if len(obs) == 0 or len(var) == 0:
        raise InputError(f"the AnnData is empty ({len(obs)} cells x {len(var)} genes)")
    return validated(BackedCounts(p, element), location, obs, var, why=why, **kwargs)
