"""The gene panel: which genes' attention rows and columns the extraction keeps (DESIGN.md section 5).

Panel = perturbed genes, then reference TFs seen in the cells (most frequently expressed first, at most a third
of the panel), then highly variable genes (variance of log1p CP10k expression, the evaluation universe of the
paper's perturbation-first analysis, section 4.3) until ``panel_size`` is reached. Only genes in the model's
vocabulary can be in the panel.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io.cells import CellData
from ..io.expression import expression_matrix


def highly_variable(cells: CellData, gene_ids: np.ndarray, n_top: int) -> np.ndarray:
    """Indices into ``gene_ids`` of the ``n_top`` genes with the highest variance of log1p(CP10k) expression."""
    x = expression_matrix(cells, gene_ids, dense=False)
    mean = np.asarray(x.mean(axis=0)).ravel()
    var = np.asarray(x.multiply(x).mean(axis=0)).ravel() - mean ** 2
    return np.argsort(-var, kind="stable")[: min(n_top, gene_ids.size)]


def select_panel(cells: CellData, genes: pd.DataFrame, present: np.ndarray, *, reference_tfs: set[str], n_hvg: int,
                 panel_size: int) -> pd.DataFrame:
    """Panel table (schema ``panel``): one row per panel gene with its index into ``genes`` (the vocabulary genes
    of the data, ``gene_id`` and ``symbol``; a tokenisation's ``genes``). ``present``: ``[len(genes)]`` cells in
    which each gene can be in the model input (in the tokens, or expressed when every cell's input is the panel);
    genes present in no cell are never chosen."""
    symbols = genes["symbol"].to_numpy()
    present = np.asarray(present)
    perturbed = set(cells.perturbed_genes())
    chosen: list[int] = [i for i in np.nonzero(np.isin(symbols, list(perturbed)))[0] if present[i] > 0]
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
    })
