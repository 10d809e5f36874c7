"""The gene panel: which genes' attention rows and columns the extraction keeps (DESIGN.md section 5).

Panel = the evaluation universe when it is not the panel itself (:func:`evaluation_universe`), perturbed genes, then reference TFs seen in the cells (most frequently expressed first, at most a third
of the panel), then highly variable genes (variance of log1p CP10k expression, the evaluation universe of the
paper's perturbation-first analysis, section 4.3) until ``panel_size`` is reached. Only genes in the model's
vocabulary can be in the panel.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io.cells import CellData


def highly_variable(cells: CellData, gene_ids: np.ndarray, n_top: int) -> np.ndarray:
    """Indices into ``gene_ids`` of the ``n_top`` genes with the highest variance (population, over every cell) of
    log1p(CP10k) expression, from the cells' streamed moments (:attr:`CellData.moments`)."""
    var = cells.moments.pooled().columns(gene_ids).var(ddof=0)[0]
    return np.argsort(-var, kind="stable")[: min(n_top, gene_ids.size)]


def evaluation_universe(cells: CellData, genes: pd.DataFrame, present: np.ndarray, kind: str, size: int
                        ) -> np.ndarray | None:
    """Indices into ``genes`` of the perturbation-first evaluation universe (``perturbation.universe``): ``hvg``, the
    ``size`` most variable genes among those present (the paper's K562 protocol, section 4.3: top 2,000 HVGs by
    variance, SN14.9); ``hvg_plus_perturbed``, those plus every present perturbed gene (its RPE1 protocol); ``panel``:
    None (the universe is whatever panel is chosen)."""
    if kind == "panel":
        return None
    present = np.asarray(present) > 0
    hvg = [int(i) for i in highly_variable(cells, genes["gene_id"].to_numpy(), int(present.size)) if present[i]][:size]
    if kind == "hvg_plus_perturbed":
        perturbed = np.nonzero(np.isin(genes["symbol"].to_numpy(), cells.perturbed_genes()) & present)[0]
        taken = set(hvg)
        hvg += [int(i) for i in perturbed if int(i) not in taken]
    return np.array(hvg, dtype=int)


def select_panel(cells: CellData, genes: pd.DataFrame, present: np.ndarray, *, reference_tfs: set[str], n_hvg: int,
                 panel_size: int, universe: np.ndarray | None = None) -> pd.DataFrame:
    """Panel table (schema ``panel``): one row per panel gene with its index into ``genes`` (the vocabulary genes
    of the data, ``gene_id`` and ``symbol``; a tokenisation's ``genes``). ``present``: ``[len(genes)]`` cells in
    which each gene can be in the model input (in the tokens, or expressed when every cell's input is the panel);
    genes present in no cell are never chosen. ``universe`` (:func:`evaluation_universe`) comes first, whole (an
    :class:`InputError` when ``panel_size`` cannot hold it); ``in_universe`` marks it (every gene when None)."""
    symbols = genes["symbol"].to_numpy()
    present = np.asarray(present)
    perturbed = set(cells.perturbed_genes())
    chosen: list[int] = [] if universe is None else [int(i) for i in universe]
    if len(chosen) > panel_size:
        raise InputError(f"the attention panel must cover the evaluation universe ({len(chosen)} genes) but "
                         f"extraction.panel_size is {panel_size}: raise --panel-size to at least {len(chosen)}, "
                         "lower perturbation.universe_size, or use perturbation.universe=panel")
    in_universe = set(chosen)
    chosen += [i for i in np.nonzero(np.isin(symbols, list(perturbed)))[0] if present[i] > 0 and i not in in_universe]
    tf_idx = [i for i in np.argsort(-present, kind="stable") if symbols[i] in reference_tfs and present[i] > 0]
    chosen += [i for i in tf_idx if i not in set(chosen)][: max(panel_size // 3 - len(chosen), 0)]
    hvg = highly_variable(cells, genes["gene_id"].to_numpy(), n_hvg)
    taken = set(chosen)
    for i in hvg:
        if len(chosen) >= panel_size:
            break
        if i not in taken and present[i] > 0:
            chosen.append(int(i))
            taken.add(int(i))
    if len(chosen) < 2:
        raise InputError(f"only {len(chosen)} gene(s) qualify for the attention panel; need at least 2 expressed "
                         "vocabulary genes")
    chosen = np.array(chosen[:panel_size])
    hvg_set = set(hvg.tolist())
    return pd.DataFrame({
        "gene_index": chosen,
        "gene_id": genes["gene_id"].to_numpy()[chosen],
        "symbol": symbols[chosen],
        "is_hvg": [int(i) in hvg_set for i in chosen],
        "is_tf": [symbols[i] in reference_tfs for i in chosen],
        "is_perturbed": [symbols[i] in perturbed for i in chosen],
        "n_cells": present[chosen],
        "in_universe": np.ones(chosen.size, bool) if universe is None else np.isin(chosen, universe),
    })


COMBINATION_SEPARATORS = re.compile(r"[+|_]")   # scPerturb's and the screens' spellings of A and B together


def combination_parts(label: str, symbols) -> list[str] | None:
    """The genes of a combinatorial perturbation label (``A+B``, ``A_B``, ``A|B``: every part one of ``symbols``,
    at least two), or None for a single perturbation or a label that is not such a combination."""
    parts = [p for p in COMBINATION_SEPARATORS.split(label) if p]
    return parts if len(parts) > 1 and all(p in symbols for p in parts) else None


def perturbations_left_out(cells: CellData, genes: pd.DataFrame, present: np.ndarray, panel: pd.DataFrame,
                           panel_size: int) -> pd.DataFrame:
    """The screen's perturbed genes that are not panel genes, so that no perturbation-first AUROC can be scored for
    them, each with the reason (columns perturbation, reason): a combination of genes (:func:`combination_parts`:
    only single perturbations are scored; the combination's genes are scored from their own single-perturbation
    cells), not a vocabulary gene of the data (``genes``), in no cell's model input (``present`` = 0), or cut when
    the panel was full (:func:`select_panel` takes the universe, then the perturbed genes in the data's gene order,
    then TFs and HVGs, up to ``panel_size``)."""
    index = {s: i for i, s in enumerate(genes["symbol"].to_numpy())}
    in_panel = set(panel["symbol"])
    data_symbols = set(cells.symbols)
    rows = []
    for gene in cells.perturbed_genes():
        if gene in in_panel:
            continue
        parts = combination_parts(gene.upper(), data_symbols)
        if parts is not None:
            reason = "a combination of perturbations: only single perturbations are scored"
        elif gene not in index:
            reason = "not a vocabulary gene of the model among the data's genes"
        elif present[index[gene]] <= 0:
            reason = "in no cell's model input (not expressed, or never tokenised)"
        else:
            reason = (f"cut: the {panel_size}-gene panel was full (universe, then perturbed genes in the data's gene "
                      "order); raise --panel-size")
        rows.append((gene, reason))
    return pd.DataFrame(rows, columns=["perturbation", "reason"])


def describe_left_out(left_out: pd.DataFrame, names: int = 8) -> str:
    """:func:`perturbations_left_out` in one line, grouped by reason: ``"reason: A, B, ... (n); ..."`` naming at most
    ``names`` genes a reason (the precompute log and the Perturbation page say it alike)."""
    return "; ".join(f"{reason}: {', '.join(group['perturbation'][:names])}{' ...' if len(group) > names else ''} "
                     f"({len(group)})" for reason, group in left_out.groupby("reason", sort=False))
