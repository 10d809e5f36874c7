"""A run's gene network from one edge source, as the table GRN tools take (decoupler's and geneRNIB's ``source,
target, weight``), with the attributes Cytoscape users colour by: co-observed cells and the reference networks each
edge is in.

Sources (:func:`parse_source`): one head (``L3H1``: mean attention of the regulator as query on each gene, summed over
cells / co-observed cells, as everywhere in the explorer), a layer's head mean (``L3 mean``), or the Spearman
correlation of the attention cells' expression (``spearman``). Regulators are the genes whose per-head attention the
run keeps (reference TFs and perturbed genes in the panel, :func:`analysis.io.stores.source_genes`); each keeps its
``top`` strongest co-observed targets. Memory: one ``[regulators, genes]`` block of one source, never a full
``[genes, genes]`` per head.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import files
from ..io.stores import AttentionStore
from .cssi_levels import load_cssi, stratum_edges
from .edges import head_edges, mean_scores
from .strata import add_level

COLUMNS = ("source", "target", "weight", "n_cells", "references", "mode")
DEFAULT_TOP = 50


@dataclass(frozen=True)
class EdgeSource:
    """``kind``: ``head``, ``layer_mean`` or ``spearman``; ``layer`` and ``head`` where they apply (else -1)."""

    kind: str
    layer: int = -1
    head: int = -1

    @property
    def label(self) -> str:
        return {"head": f"L{self.layer}H{self.head}", "layer_mean": f"L{self.layer} mean"}.get(self.kind, "spearman")


def parse_source(text: str, n_layers: int, n_heads: int) -> EdgeSource:
    """``L3H1``, ``L3 mean`` or ``spearman`` as an :class:`EdgeSource` of a model with ``n_layers`` x ``n_heads``;
    an InputError names anything else."""
    text = text.strip()
    if text.lower() == "spearman":
        return EdgeSource("spearman")
    if match := re.fullmatch(r"L(\d+)H(\d+)", text):
        source = EdgeSource("head", int(match[1]), int(match[2]))
    elif match := re.fullmatch(r"L(\d+) ?mean", text):
        source = EdgeSource("layer_mean", int(match[1]))
    else:
        raise InputError(f"edge source {text!r}: name a head (L3H1), a layer's head mean (L3 mean) or spearman")
    if not 0 <= source.layer < n_layers or not -1 <= source.head < n_heads:
        raise InputError(f"edge source {text!r}: the model has layers 0-{n_layers - 1} and heads 0-{n_heads - 1}")
    return source


def run_network(run_dir: Path, source: str, *, top: int = DEFAULT_TOP,
                stratum: tuple[int, int] | None = None) -> pd.DataFrame:
    """The network of ``source`` (:func:`parse_source`) in the finished run ``run_dir``: one row per edge, columns
    :data:`COLUMNS` (weight: the source's score; n_cells: cells in which both genes were in the input;
    references: the run's reference networks holding the edge, ``;``-joined; mode: their sign where one is given),
    each regulator's ``top`` strongest co-observed targets, strongest first. ``stratum = (n_strata, k)``: the
    source's scores within CSSI stratum ``k`` of ``n_strata`` (:func:`analysis.scoring.cssi_levels.stratum_edges`;
    pairs never co-observed in the stratum are left out; n_cells stays the pair's count over all cells)."""
    if top < 1:
        raise InputError(f"top = {top}: keep at least one target per regulator")
    store = AttentionStore.load(Path(run_dir))
    edge_source = parse_source(source, store.n_layers, store.n_heads)
    rows = np.asarray(store.source_rows, dtype=np.int64)
    counts = np.asarray(store.counts[rows])                                     # [regulators, G]
    scores = (_scores(Path(run_dir), store, edge_source, rows, counts) if stratum is None
              else _stratum_scores(Path(run_dir), edge_source, rows, *stratum))
    counts = np.where(np.isfinite(scores), counts, 0)
    symbols = store.panel["symbol"].to_numpy()
    observed = counts > 0
    observed[np.arange(len(rows)), rows] = False                               # no self-edges
    scores = np.where(observed, scores, -np.inf)
    k = min(top, scores.shape[1])
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    r_idx = np.repeat(np.arange(len(rows)), k)
    c_idx = best.ravel()
    keep = np.isfinite(scores[r_idx, c_idx])
    r_idx, c_idx = r_idx[keep], c_idx[keep]
    table = pd.DataFrame({"source": symbols[rows[r_idx]], "target": symbols[c_idx],
                          "weight": scores[r_idx, c_idx], "n_cells": counts[r_idx, c_idx].astype(np.int64)})
    return _with_references(table, pd.read_parquet(Path(run_dir) / files.table("reference_edges")))


def _scores(run_dir: Path, store: AttentionStore, source: EdgeSource, rows: np.ndarray,
            counts: np.ndarray) -> np.ndarray:
    """``[regulators, G]`` scores of one source at the regulator rows (float64)."""
    if source.kind == "head":
        return head_edges(store).head(source.layer, source.head).oriented(rows, "tf_to_target")[0]
    if source.kind == "layer_mean":
        return mean_scores(np.asarray(store.layer_sums[source.layer][rows], dtype=np.float64), counts)
    spearman = np.load(run_dir / files.EDGES_SPEARMAN, mmap_mode="r")
    return np.asarray(spearman[0][rows], dtype=np.float64)


def _stratum_scores(run_dir: Path, source: EdgeSource, rows: np.ndarray, n_strata: int, k: int) -> np.ndarray:
    """``[regulators, G]`` scores of one source within stratum ``k`` of ``n_strata`` (NaN where never co-observed
    there); an InputError names a run without CSSI, a source CSSI did not accumulate, or a stratum out of range."""
    if not (run_dir / files.CSSI_PARAMS).is_file():
        raise InputError(f"run {run_dir.name} has no CSSI strata (cssi.n_fine = 0 or no cell embedding)")
    run = load_cssi(run_dir)
    label = "Spearman" if source.kind == "spearman" else source.label
    sites = run.source.sites
    if label not in set(sites["label"]):
        raise InputError(f"CSSI kept no {source.label} per stratum (it accumulates layers "
                         f"{', '.join(f'L{x}' for x in run.params['layers'])}); pick one of those")
    if not 2 <= n_strata <= run.strata.n_fine or not 0 <= k < n_strata:
        raise InputError(f"stratum {k} of {n_strata}: choose 2-{run.strata.n_fine} strata and a stratum below that")
    assignment = add_level(run.strata, n_strata).assignment(n_strata)
    site = sites[sites["label"] == label].iloc[0]
    return stratum_edges(run, assignment, n_strata, site, rows)[k]


def _with_references(table: pd.DataFrame, reference_edges: pd.DataFrame) -> pd.DataFrame:
    keyed = reference_edges.groupby(["tf", "target"]).agg(
        references=("reference", lambda r: ";".join(sorted(set(r)))),
        mode=("mode", lambda m: ";".join(sorted({str(x) for x in m if str(x) not in ("", "nan", "None")}))))
    out = table.join(keyed, on=["source", "target"])
    out["references"] = out["references"].fillna("")
    out["mode"] = out["mode"].fillna("")
    return out[list(COLUMNS)].reset_index(drop=True)
