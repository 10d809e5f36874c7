"""The additive attention stores that extraction writes and every later stage reads (DESIGN.md sections 3 and 5):
sums of attention over a gene panel and one shared co-occurrence count matrix, pooled over all cells
(:class:`AttentionStore`: per head at the source genes' rows and at the reference TFs' columns, per layer as the head
mean over every pair)
or per cell group (:class:`GroupedAttention`, CSSI). They hold numpy arrays only
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

from . import files, mapped

def source_genes(panel: pd.DataFrame, asked: tuple[str, ...] = ()) -> np.ndarray:
    """``[R]`` panel indices whose per-head rows the pooled store keeps: reference TFs (``is_tf``), perturbed genes
    (``is_perturbed``) and the genes ``asked`` for by symbol (``extraction.source_genes``). The first
    :func:`column_count` of them, the TFs and the asked genes, have their columns kept too (each part in panel
    order): reference ranking reads a TF's row and column (both directions), perturbation-first evaluation a perturbed
    gene's row only (the perturbed gene as regulator). A symbol not in the panel is a ValueError naming it."""
    symbols = panel["symbol"].astype(str).to_numpy()
    missing = sorted(set(asked) - set(symbols))
    if missing:
        raise ValueError(f"extraction.source_genes {missing} are not in the attention panel; add them to the data or "
                         "raise extraction.panel_size")
    columns = _column_genes(panel, asked)
    rows = columns | (panel["is_perturbed"].to_numpy(dtype=bool) if "is_perturbed" in panel else False)
    return np.concatenate([np.nonzero(columns)[0], np.nonzero(rows & ~columns)[0]]).astype(np.int64)


def _column_genes(panel: pd.DataFrame, asked: tuple[str, ...]) -> np.ndarray:
    """``[G]`` bool: reference TFs and genes asked for by symbol (whose per-head columns are kept)."""
    keep = np.isin(panel["symbol"].astype(str).to_numpy(), list(asked))
    return keep | (panel["is_tf"].to_numpy(dtype=bool) if "is_tf" in panel else False)


def column_count(panel: pd.DataFrame, sources: np.ndarray, asked: tuple[str, ...] = ()) -> int:
    """How many leading ``sources`` (:func:`source_genes`) are reference TFs or asked for, so keep their columns."""
    columns = _column_genes(panel, asked)[np.asarray(sources, dtype=np.int64)]
    return int(np.argmin(columns)) if not columns.all() else int(columns.size)


def narrowest_count_dtype(max_count: int) -> np.dtype:
    """The narrowest unsigned integer type that holds co-occurrence counts up to ``max_count`` (cells)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_count <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def full_head_name(layer: int, head: int) -> str:
    """``L<layer>H<head>``: how a head is named in ``extraction.full_heads`` and in :attr:`AttentionStore.full_heads`."""
    return f"L{layer}H{head}"


@dataclass
class AttentionStore:
    """The pooled attention of a run over a ``G``-gene panel: what the analyses read, never ``[layers, heads, G, G]``
    (DESIGN.md section 5; at V2-316M's 18 x 18 heads and 2,000 genes that dense store is 10.4 GB).

    - ``source_rows``: ``[R]`` panel indices of the *source* genes (reference TFs and genes asked for by name, then
      perturbed genes: :func:`source_genes`);
    - ``head_rows``: ``[layers, heads, R, G]`` float32, ``head_rows[l, h, r, k]`` = attention of source ``r`` (query)
      on panel gene ``k`` (key) summed over cells; ``head_cols``: ``[layers, heads, C, G]``, attention of panel gene
      ``k`` (query) on source ``r < C`` (key), for the first ``C`` sources (:attr:`column_rows`: the TFs and asked
      genes), so both directions of their (source, gene) pairs are kept;
    - ``layer_sums``: ``[layers, G, G]`` float64, the head mean ``A[q, k]`` of each layer summed over cells;
    - ``counts``: ``[G, G]`` in the narrowest unsigned type that holds the number of cells: cells in which both genes
      were in the input (diagonal = cells expressing the gene);
    - ``full_heads``: ``L<l>H<h>`` -> ``[G, G]`` float64 sums of heads asked for whole (``extraction.full_heads``);
    - ``cell_embeddings``: kind -> ``[cells, d_model]`` float32 captured during extraction (empty when none was).

    Per-head sums are accumulated and kept in float32 (a sum of at most a few thousand values in [0, 1]: relative
    error below 1e-5, tested against a float64 dense reference); the layer means, read over every pair, in float64.
    """

    source_rows: np.ndarray
    head_rows: np.ndarray
    head_cols: np.ndarray
    layer_sums: np.ndarray
    counts: np.ndarray
    n_cells: int
    panel: pd.DataFrame
    params: dict = field(default_factory=dict)
    full_heads: dict[str, np.ndarray] = field(default_factory=dict)
    cell_embeddings: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.layer_sums.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.head_rows.shape[1])

    @property
    def column_rows(self) -> np.ndarray:
        """``[C]`` panel indices of the sources whose columns are kept (the leading ``C`` of :attr:`source_rows`)."""
        return self.source_rows[: self.head_cols.shape[2]]

    def __add__(self, other: "AttentionStore") -> "AttentionStore":
        """Merge two shards (disjoint cells, same model, panel and sources) by summation."""
        if (self.head_rows.shape != other.head_rows.shape or self.head_cols.shape != other.head_cols.shape
                or not self.panel["gene_id"].equals(other.panel["gene_id"])
                or not np.array_equal(self.source_rows, other.source_rows)
                or set(self.full_heads) != set(other.full_heads)):
            raise ValueError("attention stores over different panels, sources or model shapes cannot be merged")
        embeddings = {kind: np.concatenate([emb, other.cell_embeddings[kind]])
                      for kind, emb in self.cell_embeddings.items() if kind in other.cell_embeddings}
        n_cells = self.n_cells + other.n_cells
        counts = (np.asarray(self.counts, dtype=np.uint64) + other.counts).astype(narrowest_count_dtype(n_cells))
        return AttentionStore(self.source_rows, self.head_rows + other.head_rows, self.head_cols + other.head_cols,
                              self.layer_sums + other.layer_sums, counts, n_cells, self.panel,
                              {**self.params, "merged": True},
                              {name: m + other.full_heads[name] for name, m in self.full_heads.items()}, embeddings)

    def nbytes(self) -> int:
        """Bytes of the arrays held (what the run's plan estimates for the attention stage)."""
        arrays = [self.head_rows, self.head_cols, self.layer_sums, self.counts, *self.full_heads.values()]
        return int(sum(np.asarray(a).nbytes for a in arrays))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / files.ATTENTION_SOURCE_ROWS, np.asarray(self.source_rows, dtype=np.int64))
        np.save(directory / files.ATTENTION_HEAD_ROWS, self.head_rows)
        np.save(directory / files.ATTENTION_HEAD_COLS, self.head_cols)
        np.save(directory / files.ATTENTION_LAYER_SUMS, self.layer_sums)
        np.save(directory / files.PAIR_COUNTS, self.counts)
        if self.full_heads:
            np.savez(directory / files.ATTENTION_FULL_HEADS, **self.full_heads)
        self.panel.to_parquet(directory / files.table("panel"), index=False)
        (directory / files.ATTENTION_PARAMS).write_text(json.dumps({"n_cells": self.n_cells, **self.params},
                                                                    default=str, indent=1))
        for kind, emb in self.cell_embeddings.items():
            np.save(directory / files.cell_embeddings(kind), emb)

    @classmethod
    def load(cls, directory: Path, mmap: bool = True) -> "AttentionStore":
        """A saved store; ``mmap`` leaves the large arrays on disk, read as they are indexed."""
        params = json.loads((directory / files.ATTENTION_PARAMS).read_text())
        embeddings = {kind: np.load(directory / files.cell_embeddings(kind)) for kind in files.EMBEDDING_KINDS
                      if (directory / files.cell_embeddings(kind)).is_file()}
        full = {}
        if (directory / files.ATTENTION_FULL_HEADS).is_file():
            with np.load(directory / files.ATTENTION_FULL_HEADS) as saved:
                full = {name: saved[name] for name in saved.files}
        arrays = [mapped.load(directory / name) if mmap else np.load(directory / name) for name in
                  (files.ATTENTION_HEAD_ROWS, files.ATTENTION_HEAD_COLS, files.ATTENTION_LAYER_SUMS, files.PAIR_COUNTS)]
        return cls(np.load(directory / files.ATTENTION_SOURCE_ROWS), *arrays, int(params.pop("n_cells")),
                   pd.read_parquet(directory / files.table("panel")), params, full, embeddings)


def grouped_store_bytes(n_groups: int, n_layers: int, n_heads: int, n_panel: int, n_sources: int, *,
                        keep_cols: bool, max_group: int) -> int:
    """Bytes of a :class:`GroupedAttention` (its float32 accumulators and the counts)."""
    per_layer = n_panel ** 2 * 4 + n_heads * n_sources * n_panel * 4 * (2 if keep_cols else 1)
    return n_groups * (n_layers * per_layer + n_panel ** 2 * narrowest_count_dtype(max_group).itemsize)


@dataclass
class GroupedAttention:
    """Attention sums per cell group (CSSI fine clusters and random null groups; analysis.scoring.cssi), laid out
    as the pooled store is, with a leading group axis, for the ``layers`` kept:

    - ``source_rows``: ``[R]`` panel indices whose per-head rows are kept (every panel gene, in order, when they fit:
      then ``head_rows`` is each head's whole ``G x G``);
    - ``head_rows``: ``[groups, len(layers), heads, R, G]`` float32, source as query; ``head_cols``: the same
      shape, source as key, or None when no direction reads it (or the rows hold every gene);
    - ``layer_sums``: ``[groups, len(layers), G, G]`` float32, each layer's head mean summed over the group's cells;
    - ``counts``: ``[groups, G, G]`` in the narrowest unsigned type holding the largest group.

    Groups may overlap (a cell belongs to one group of each grouping); summing the groups of one grouping gives the
    pooled sums of those layers. Group sums hold at most a few hundred cells' attention, so float32 is exact to
    1e-6 relative (tested against a float64 dense reference)."""

    source_rows: np.ndarray
    head_rows: np.ndarray
    head_cols: np.ndarray | None
    layer_sums: np.ndarray
    counts: np.ndarray
    layers: tuple[int, ...]
    panel: pd.DataFrame

    @property
    def full_rows(self) -> bool:
        """Whether every panel gene's row is kept (each head's whole ``G x G`` per group)."""
        return self.source_rows.size == len(self.panel)

    def nbytes(self) -> int:
        arrays = [self.head_rows, self.layer_sums, self.counts] + ([] if self.head_cols is None else [self.head_cols])
        return int(sum(np.asarray(a).nbytes for a in arrays))

    def save(self, directory: Path) -> None:
        """Write the arrays (strided views are streamed to disk, not copied)."""
        np.save(directory / files.CSSI_SOURCE_ROWS, np.asarray(self.source_rows, dtype=np.int64))
        np.save(directory / files.CSSI_HEAD_ROWS, self.head_rows)
        if self.head_cols is not None:
            np.save(directory / files.CSSI_HEAD_COLS, self.head_cols)
        np.save(directory / files.CSSI_LAYER_SUMS, self.layer_sums)
        np.save(directory / files.CSSI_GROUP_COUNTS, self.counts)

    @classmethod
    def load(cls, directory: Path, layers: tuple[int, ...], panel: pd.DataFrame) -> "GroupedAttention":
        """A saved store, its large arrays memory-mapped."""
        cols = directory / files.CSSI_HEAD_COLS
        return cls(np.load(directory / files.CSSI_SOURCE_ROWS), mapped.load(directory / files.CSSI_HEAD_ROWS),
                   mapped.load(cols) if cols.is_file() else None, mapped.load(directory / files.CSSI_LAYER_SUMS),
                   mapped.load(directory / files.CSSI_GROUP_COUNTS), tuple(layers), panel)

    def release_pages(self) -> None:
        """Drop the pages a pass read from this process's resident memory (a pass over every head's rows touches all
        of a multi-GB file; :func:`analysis.io.mapped.release`); nothing for a store in memory."""
        mapped.release(self.head_rows, self.head_cols, self.layer_sums, self.counts)
