"""The additive attention stores that extraction writes and every later stage reads (DESIGN.md sections 3 and 5):
gene-pair sums of attention per (layer, head) over a panel and one shared co-occurrence count matrix, pooled over
all cells (:class:`AttentionStore`) or per cell group (:class:`GroupedAttention`, CSSI). They hold numpy arrays only
(no torch), are saved as plain ``.npy`` / parquet / JSON files in a run, and merge across cell shards by summation.
Cell embeddings captured during extraction travel with the pooled store, one array per kind
(``analysis.io.files.EMBEDDING_KINDS``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import files

@dataclass
class AttentionStore:
    """``sums``: ``[layers, heads, G, G]`` float64, ``sums[l, h, q, k]`` = attention of panel gene q (query, row)
    on panel gene k (key, column) summed over cells; ``counts``: ``[G, G]`` int64, cells in which both q and k
    were in the input (diagonal = cells expressing the gene); ``panel``: G rows (schema ``panel``);
    ``cell_embeddings``: kind -> ``[cells, d_model]`` float32 captured during extraction (empty when none was)."""

    sums: np.ndarray
    counts: np.ndarray
    n_cells: int
    panel: pd.DataFrame
    params: dict = field(default_factory=dict)
    cell_embeddings: dict[str, np.ndarray] = field(default_factory=dict)

    def __add__(self, other: "AttentionStore") -> "AttentionStore":
        """Merge two shards (disjoint cells, same model and panel) by summation."""
        if self.sums.shape != other.sums.shape or not self.panel["gene_id"].equals(other.panel["gene_id"]):
            raise ValueError("attention stores over different panels or model shapes cannot be merged")
        embeddings = {kind: np.concatenate([emb, other.cell_embeddings[kind]])
                      for kind, emb in self.cell_embeddings.items() if kind in other.cell_embeddings}
        return AttentionStore(self.sums + other.sums, self.counts + other.counts, self.n_cells + other.n_cells,
                              self.panel, {**self.params, "merged": True}, embeddings)

    def mean_attention(self) -> np.ndarray:
        """``[layers, heads, G, G]`` edge scores: sums / co-occurrence counts (NaN where never co-observed)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / files.ATTENTION_SUMS, self.sums)
        np.save(directory / files.PAIR_COUNTS, self.counts)
        self.panel.to_parquet(directory / files.table("panel"), index=False)
        (directory / files.ATTENTION_PARAMS).write_text(json.dumps({"n_cells": self.n_cells, **self.params},
                                                                    default=str, indent=1))
        for kind, emb in self.cell_embeddings.items():
            np.save(directory / files.cell_embeddings(kind), emb)

    @classmethod
    def load(cls, directory: Path, mmap: bool = True) -> "AttentionStore":
        params = json.loads((directory / files.ATTENTION_PARAMS).read_text())
        mode = "r" if mmap else None
        embeddings = {kind: np.load(directory / files.cell_embeddings(kind)) for kind in files.EMBEDDING_KINDS
                      if (directory / files.cell_embeddings(kind)).is_file()}
        return cls(np.load(directory / files.ATTENTION_SUMS, mmap_mode=mode),
                   np.load(directory / files.PAIR_COUNTS, mmap_mode=mode), int(params.pop("n_cells")),
                   pd.read_parquet(directory / files.table("panel")), params, embeddings)


@dataclass
class GroupedAttention:
    """Attention sums per cell group (CSSI fine clusters and random null groups; analysis.scoring.cssi).

    ``sums``: ``[groups, len(layers), heads, G, G]`` float32; ``counts``: ``[groups, G, G]`` int32 co-occurrence
    counts; ``layers``: the model layers kept. Groups may overlap (a cell can belong to one group of each
    grouping); summing the groups of one grouping gives the pooled store of those layers."""

    sums: np.ndarray
    counts: np.ndarray
    layers: tuple[int, ...]
    panel: pd.DataFrame
