"""Streaming attention extraction into an additive gene-pair store (DESIGN.md sections 3 and 5).

Edge score (paper section 2.1, Supplementary Note 13): summed attention of query gene q on key gene k over
cells, divided by the number of cells in which both genes are in the model input. Full attention
``[cells, layers, heads, seq, seq]`` is never materialised: the model runs its fast (SDPA) forward while hooks
on each layer's query/key projections recompute softmax attention only for the rows of panel genes
(``[batch, heads, panel_rows, seq]``, normalised over all non-padded keys, exactly as the model does), gather the
panel columns, and add them into per-(layer, head) sums with one ``index_add_`` per layer and batch. Memory is
independent of the number of cells, and stores over disjoint cell shards merge by summation.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..models.geneformer.adapter import GeneformerAdapter
from ..models.geneformer.tokenizer import TokenizedCells


@dataclass
class AttentionStore:
    """``sums``: ``[layers, heads, G, G]`` float64, ``sums[l, h, q, k]`` = attention of panel gene q (query, row)
    on panel gene k (key, column) summed over cells; ``counts``: ``[G, G]`` int64, cells in which both q and k
    were in the input (diagonal = cells expressing the gene); ``panel``: G rows (schema ``panel``);
    ``cell_embeddings``: ``[cells, d_model]`` float32 captured during extraction (None when not captured)."""

    sums: np.ndarray
    counts: np.ndarray
    n_cells: int
    panel: pd.DataFrame
    params: dict = field(default_factory=dict)
    cell_embeddings: np.ndarray | None = None

    def __add__(self, other: "AttentionStore") -> "AttentionStore":
        """Merge two shards (disjoint cells, same model and panel) by summation."""
        if self.sums.shape != other.sums.shape or not self.panel["gene_id"].equals(other.panel["gene_id"]):
            raise ValueError("attention stores over different panels or model shapes cannot be merged")
        embeddings = None
        if self.cell_embeddings is not None and other.cell_embeddings is not None:
            embeddings = np.concatenate([self.cell_embeddings, other.cell_embeddings])
        return AttentionStore(self.sums + other.sums, self.counts + other.counts, self.n_cells + other.n_cells,
                              self.panel, {**self.params, "merged": True}, embeddings)

    def mean_attention(self) -> np.ndarray:
        """``[layers, heads, G, G]`` edge scores: sums / co-occurrence counts (NaN where never co-observed)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan)

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "attention_sums.npy", self.sums)
        np.save(directory / "pair_counts.npy", self.counts)
        self.panel.to_parquet(directory / "panel.parquet", index=False)
        (directory / "attention_params.json").write_text(json.dumps({"n_cells": self.n_cells, **self.params},
                                                                     default=str, indent=1))
        names = ["attention_sums.npy", "pair_counts.npy", "panel.parquet", "attention_params.json"]
        if self.cell_embeddings is not None:
            np.save(directory / "cell_embeddings.npy", self.cell_embeddings)
            names.append("cell_embeddings.npy")
        return [directory / n for n in names]

    @classmethod
    def load(cls, directory: Path, mmap: bool = True) -> "AttentionStore":
        params = json.loads((directory / "attention_params.json").read_text())
        mode = "r" if mmap else None
        emb = directory / "cell_embeddings.npy"
        return cls(np.load(directory / "attention_sums.npy", mmap_mode=mode),
                   np.load(directory / "pair_counts.npy", mmap_mode=mode), int(params.pop("n_cells")),
                   pd.read_parquet(directory / "panel.parquet"), params, np.load(emb) if emb.is_file() else None)


@dataclass(frozen=True)
class _PanelBatch:
    """Where panel genes sit in one padded batch. ``positions``/``valid``: ``[batch, P]``; ``pair_cell``,
    ``pair_row``, ``pair_col``: coordinates of every valid (query, key) panel pair; ``pair_flat``: its index
    into a flattened ``[G * G]`` matrix."""

    positions: torch.Tensor
    pair_cell: torch.Tensor
    pair_row: torch.Tensor
    pair_col: torch.Tensor
    pair_flat: torch.Tensor


def _panel_batch(gene_index: np.ndarray, panel_of_gene: np.ndarray, n_panel: int,
                 device: torch.device) -> _PanelBatch:
    slot = np.where(gene_index >= 0, panel_of_gene[np.maximum(gene_index, 0)], -1)  # [batch, seq]
    in_panel = slot >= 0
    width = max(int(in_panel.sum(axis=1).max()), 1)
    positions = np.zeros((slot.shape[0], width), dtype=np.int64)
    genes = np.full((slot.shape[0], width), -1, dtype=np.int64)
    for b in range(slot.shape[0]):
        pos = np.nonzero(in_panel[b])[0]
        positions[b, : pos.size] = pos
        genes[b, : pos.size] = slot[b, pos]
    # the [batch, P, P] pair enumeration runs on the model's device: on a GPU, building millions of pair indices
    # with numpy and copying them over cost ~10x the forward pass (tests/benchmarks/cssi_extraction.py)
    g = torch.as_tensor(genes, device=device)
    valid = g >= 0
    cell, row, col = torch.nonzero(valid[:, :, None] & valid[:, None, :], as_tuple=True)
    flat = g[cell, row] * n_panel + g[cell, col]
    return _PanelBatch(torch.as_tensor(positions, device=device), cell, row, col, flat)


@contextmanager
def _capture_projections(adapter: GeneformerAdapter) -> Iterator[dict]:
    """Forward hooks keeping each layer's query and key projection outputs ``[batch, seq, heads*d_head]``, and the
    hidden states entering the last layer (``"embedding"``, ``[batch, seq, d_model]``: Geneformer's default cell
    embedding layer, the second to last hidden state)."""
    captured: dict = {}
    handles = []
    for layer in range(adapter.n_layers):
        attn = adapter.module(adapter.sites.attention(layer))
        for name in ("query", "key"):
            def hook(_m, inp, out, layer=layer, name=name):
                captured[(layer, name)] = out
                if name == "query" and layer == adapter.n_layers - 1:
                    captured["embedding"] = inp[0]
            handles.append(getattr(attn, name).register_forward_hook(hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def panel_rows_attention(query: torch.Tensor, key: torch.Tensor, key_mask: torch.Tensor, positions: torch.Tensor,
                         n_heads: int) -> torch.Tensor:
    """Softmax attention of the panel rows over all keys, then restricted to panel columns.

    ``query``/``key``: ``[batch, seq, heads*d_head]`` projections; ``key_mask``: ``[batch, seq]`` bool (True =
    real token); ``positions``: ``[batch, P]`` sequence positions of panel genes. Returns ``[batch, heads, P, P]``
    float32, identical to the model's eager ``softmax(QK^T / sqrt(d_head) + mask)`` at those rows/columns.
    """
    b, s, hd = key.shape
    d = hd // n_heads
    idx = positions[:, :, None].expand(-1, -1, hd)
    q = torch.gather(query, 1, idx).float().view(b, -1, n_heads, d).transpose(1, 2)   # [b, h, P, d]
    k = key.float().view(b, s, n_heads, d).transpose(1, 2)                              # [b, h, s, d]
    scores = torch.matmul(q, k.transpose(-1, -2)) * d ** -0.5                            # [b, h, P, s]
    scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    col = positions[:, None, None, :].expand(-1, n_heads, probs.shape[2], -1)
    return torch.gather(probs, 3, col)                                                   # [b, h, P, P]


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

    def save(self, directory: Path) -> list[Path]:
        np.save(directory / "cssi_group_sums.npy", self.sums)
        np.save(directory / "cssi_group_counts.npy", self.counts)
        return [directory / "cssi_group_sums.npy", directory / "cssi_group_counts.npy"]

    @classmethod
    def load(cls, directory: Path, layers: tuple[int, ...], panel: pd.DataFrame) -> "GroupedAttention":
        return cls(np.load(directory / "cssi_group_sums.npy", mmap_mode="r"),
                   np.load(directory / "cssi_group_counts.npy", mmap_mode="r"), tuple(layers), panel)


def _stream(adapter: GeneformerAdapter, cells: TokenizedCells, panel: pd.DataFrame, *, groups: np.ndarray,
            n_groups: int, layers: tuple[int, ...], batch_size: int, dtype: torch.dtype, progress: bool,
            embeddings: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The extraction loop (module doc). ``groups``: ``[cells, n_groupings]`` group index of each cell in each
    grouping (every cell adds to one group per column). Returns sums ``[len(layers), heads, n_groups * G * G]``
    and counts ``[n_groups * G * G]``; fills ``embeddings`` ``[cells, d_model]`` (mean over gene tokens of the
    hidden states entering the last layer) when given."""
    n_panel = len(panel)
    panel_of_gene = np.full(len(cells.genes), -1, dtype=np.int64)
    panel_of_gene[panel["gene_index"].to_numpy()] = np.arange(n_panel)
    dev = adapter.device
    block_size = n_panel * n_panel
    sums = torch.zeros(len(layers), adapter.n_heads, n_groups * block_size, dtype=dtype, device=dev)
    counts = torch.zeros(n_groups * block_size, dtype=torch.int64, device=dev)
    group_of = torch.as_tensor(groups, device=dev)
    with _capture_projections(adapter) as captured:
        for idx in tqdm(list(cells.batches(batch_size)), desc="attention", unit="batch", disable=not progress):
            sub = cells.subset(idx)
            pb = _panel_batch(sub.gene_index, panel_of_gene, n_panel, dev)
            cell_groups = group_of[torch.as_tensor(idx, device=dev)][pb.pair_cell]        # [pairs, groupings]
            targets = [pb.pair_flat + cell_groups[:, c] * block_size for c in range(groups.shape[1])]
            for t in targets:
                counts.index_add_(0, t, torch.ones_like(t))
            mask = torch.as_tensor(sub.attention_mask, device=dev).bool()
            adapter.forward(sub.input_ids, sub.attention_mask)
            for i, layer in enumerate(layers):
                block = panel_rows_attention(captured[(layer, "query")], captured[(layer, "key")], mask,
                                             pb.positions, adapter.n_heads)
                vals = block[pb.pair_cell, :, pb.pair_row, pb.pair_col].T.to(dtype)      # [heads, pairs]
                for t in targets:
                    sums[i].index_add_(1, t, vals)
            if embeddings is not None:
                genes = torch.as_tensor(sub.gene_index >= 0, device=dev)[:, :, None].float()
                hidden = captured["embedding"].float()
                embeddings[idx] = ((hidden * genes).sum(1) / genes.sum(1).clamp(min=1)).cpu().numpy()
            captured.clear()
    return sums, counts


def extract_attention(adapter: GeneformerAdapter, cells: TokenizedCells, panel: pd.DataFrame, *,
                      batch_size: int = 8, progress: bool = True) -> AttentionStore:
    """Stream ``cells`` through ``adapter`` and accumulate panel x panel attention (see module doc), capturing
    each cell's embedding on the way (``cell_embeddings``, used for CSSI strata).

    ``panel`` rows index ``cells.genes`` through ``gene_index``. Peak memory: the model's forward plus
    ``[batch, heads, P, seq]`` for one layer, plus the fixed ``[layers, heads, G, G]`` store.
    """
    n_panel = len(panel)
    embeddings = np.zeros((cells.n_cells, adapter.model.config.hidden_size), dtype=np.float32)
    sums, counts = _stream(adapter, cells, panel, groups=np.zeros((cells.n_cells, 1), dtype=np.int64), n_groups=1,
                           layers=tuple(range(adapter.n_layers)), batch_size=batch_size, dtype=torch.float64,
                           progress=progress, embeddings=embeddings)
    params = {"model": adapter.name, "n_layers": adapter.n_layers, "n_heads": adapter.n_heads,
              "batch_size": batch_size, "definition": "sum over cells of A[q,k] (query q attends to key k)",
              "attention_site": "softmax(QK^T/sqrt(d)) recomputed from hooked query/key projections"}
    return AttentionStore(
        sums=sums.view(adapter.n_layers, adapter.n_heads, n_panel, n_panel).cpu().numpy(),
        counts=counts.view(n_panel, n_panel).cpu().numpy(), n_cells=cells.n_cells,
        panel=panel.reset_index(drop=True), params=params, cell_embeddings=embeddings)


def extract_grouped_attention(adapter: GeneformerAdapter, cells: TokenizedCells, panel: pd.DataFrame,
                              groups: np.ndarray, n_groups: int, *, layers: tuple[int, ...], batch_size: int = 8,
                              progress: bool = True) -> GroupedAttention:
    """Attention of ``layers`` accumulated per cell group: one extraction pass whatever the number of groups.
    ``groups``: ``[cells, n_groupings]`` (see :func:`_stream`). Memory: ``n_groups x len(layers) x heads x G^2``
    float32 on top of a plain extraction."""
    n_panel = len(panel)
    sums, counts = _stream(adapter, cells, panel, groups=groups, n_groups=n_groups, layers=layers,
                           batch_size=batch_size, dtype=torch.float32, progress=progress)
    return GroupedAttention(
        sums.view(len(layers), adapter.n_heads, n_groups, n_panel, n_panel).permute(2, 0, 1, 3, 4).cpu().numpy(),
        counts.view(n_groups, n_panel, n_panel).to(torch.int32).cpu().numpy(), tuple(layers),
        panel.reset_index(drop=True))
