"""Streaming attention extraction into an additive gene-pair store (DESIGN.md sections 3 and 5).

Edge score (paper section 2.1, Supplementary Note 13): summed attention of query gene q on key gene k over
cells, divided by the number of cells in which both genes are in the model input. Full attention
``[cells, layers, heads, seq, seq]`` is never materialised: the model runs its fast (SDPA) forward while hooks
on each layer's query/key projections recompute softmax attention only for the rows of panel genes
(``[batch, heads, panel_rows, seq]``, normalised over all non-padded keys, exactly as the model does), gather the
panel columns, and add them into per-(layer, head) sums with one ``index_add_`` per layer and batch. Memory is
independent of the number of cells, and stores over disjoint cell shards merge by summation. The sites come from the
model family's adapter (:class:`analysis.models.base.SiteMap`): separate BERT projections for Geneformer, the q and k
blocks of scGPT's packed ``Wqkv``; the same loop serves both.

Cell embeddings are captured on the way, at no extra pass: ``mean_penultimate`` (mean over gene tokens of the hidden
state entering the last layer, Geneformer's default) always, and ``cls`` (the last layer's output at ``<cls>``,
scGPT's) when the input has a ``<cls>`` token.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..io.stores import AttentionStore, GroupedAttention
from ..models.base import ModelAdapter, TokenizedCells


@dataclass(frozen=True)
class PanelBatch:
    """Where panel genes sit in one padded batch. ``positions``/``valid``: ``[batch, P]``; ``pair_cell``,
    ``pair_row``, ``pair_col``: coordinates of every valid (query, key) panel pair; ``pair_flat``: its index
    into a flattened ``[G * G]`` matrix."""

    positions: torch.Tensor
    pair_cell: torch.Tensor
    pair_row: torch.Tensor
    pair_col: torch.Tensor
    pair_flat: torch.Tensor


def panel_batch(gene_index: np.ndarray, panel_of_gene: np.ndarray, n_panel: int,
                 device: torch.device) -> PanelBatch:
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
    return PanelBatch(torch.as_tensor(positions, device=device), cell, row, col, flat)


@contextmanager
def capture_projections(adapter: ModelAdapter, *, cls: bool = False) -> Iterator[dict]:
    """Forward hooks keeping each layer's query and key projections ``[batch, seq, heads*d_head]`` (keys
    ``(layer, "query")`` / ``(layer, "key")``), the hidden states entering the last layer (``"penultimate"``,
    ``[batch, seq, d_model]``) and, with ``cls``, the last layer's output (``"final"``). One hook per module, so a
    packed projection is hooked once and sliced."""
    captured: dict = {}
    by_module: dict[str, list] = defaultdict(list)
    for layer in range(adapter.n_layers):
        by_module[adapter.sites.query(layer).module].append(((layer, "query"), adapter.sites.query(layer)))
        by_module[adapter.sites.key(layer).module].append(((layer, "key"), adapter.sites.key(layer)))
    penultimate = adapter.sites.query(adapter.n_layers - 1).module
    handles = []

    def keep(entries, is_penultimate):
        def hook(_m, inp, out):
            for key, site in entries:
                captured[key] = site.take(out)
            if is_penultimate:
                captured["penultimate"] = inp[0]
        return hook
    for module, entries in by_module.items():
        handles.append(adapter.module(module).register_forward_hook(keep(entries, module == penultimate)))
    if cls:
        handles.append(adapter.module(adapter.sites.layer(adapter.n_layers - 1)).register_forward_hook(
            lambda _m, _inp, out: captured.__setitem__("final", out[0] if isinstance(out, tuple) else out)))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def cell_embeddings(captured: dict, batch: TokenizedCells) -> dict[str, torch.Tensor]:
    """Per kind, ``[batch, d_model]`` from one forward's captures (module doc): ``mean_penultimate`` always, ``cls``
    when ``"final"`` was captured and the input has a ``<cls>`` position."""
    genes = torch.as_tensor(batch.gene_positions(), device=captured["penultimate"].device)[:, :, None].float()
    out = {"mean_penultimate": (captured["penultimate"].float() * genes).sum(1) / genes.sum(1).clamp(min=1)}
    position = batch.params.get("cls_position")
    if "final" in captured and position is not None:
        out["cls"] = captured["final"][:, position].float()
    return out


def panel_rows_attention(query: torch.Tensor, key: torch.Tensor, key_mask: torch.Tensor, positions: torch.Tensor,
                         n_heads: int) -> torch.Tensor:
    """Softmax attention of the panel rows over all keys, then restricted to panel columns.

    ``query``/``key``: ``[batch, seq, heads*d_head]`` projections; ``key_mask``: ``[batch, seq]`` bool (True =
    real token); ``positions``: ``[batch, P]`` sequence positions of panel genes. Returns ``[batch, heads, P, P]``
    in float32 (float64 for float64 inputs), identical to the model's eager ``softmax(QK^T / sqrt(d_head) + mask)`` at those rows/columns.
    """
    b, s, hd = key.shape
    d = hd // n_heads
    dtype = torch.promote_types(query.dtype, torch.float32)    # half precision is computed in fp32, fp64 kept
    idx = positions[:, :, None].expand(-1, -1, hd)
    q = torch.gather(query, 1, idx).to(dtype).reshape(b, -1, n_heads, d).transpose(1, 2)  # [b, h, P, d]
    k = key.to(dtype).reshape(b, s, n_heads, d).transpose(1, 2)                            # [b, h, s, d]
    scores = torch.matmul(q, k.transpose(-1, -2)) * d ** -0.5                            # [b, h, P, s]
    scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    col = positions[:, None, None, :].expand(-1, n_heads, probs.shape[2], -1)
    return torch.gather(probs, 3, col)                                                   # [b, h, P, P]


def _stream(adapter: ModelAdapter, cells: TokenizedCells, panel: pd.DataFrame, *, groups: np.ndarray,
            n_groups: int, layers: tuple[int, ...], batch_size: int, dtype: torch.dtype, progress: bool,
            embeddings: dict[str, np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The extraction loop (module doc). ``groups``: ``[cells, n_groupings]`` group index of each cell in each
    grouping (every cell adds to one group per column). Returns sums ``[len(layers), heads, n_groups * G * G]``
    and counts ``[n_groups * G * G]``; fills ``embeddings`` (kind -> ``[cells, d_model]``, see
    :func:`cell_embeddings`) when given."""
    n_panel = len(panel)
    panel_of_gene = np.full(len(cells.genes), -1, dtype=np.int64)
    panel_of_gene[panel["gene_index"].to_numpy()] = np.arange(n_panel)
    dev = adapter.device
    block_size = n_panel * n_panel
    sums = torch.zeros(len(layers), adapter.n_heads, n_groups * block_size, dtype=dtype, device=dev)
    counts = torch.zeros(n_groups * block_size, dtype=torch.int64, device=dev)
    group_of = torch.as_tensor(groups, device=dev)
    with capture_projections(adapter, cls=embeddings is not None) as captured:
        for idx in tqdm(list(cells.batches(batch_size)), desc="attention", unit="batch", disable=not progress):
            sub = cells.subset(idx)
            pb = panel_batch(sub.gene_index, panel_of_gene, n_panel, dev)
            cell_groups = group_of[torch.as_tensor(idx, device=dev)][pb.pair_cell]        # [pairs, groupings]
            targets = [pb.pair_flat + cell_groups[:, c] * block_size for c in range(groups.shape[1])]
            for t in targets:
                counts.index_add_(0, t, torch.ones_like(t))
            mask = torch.as_tensor(sub.attention_mask, device=dev).bool()
            adapter.forward(sub)
            for i, layer in enumerate(layers):
                block = panel_rows_attention(captured[(layer, "query")], captured[(layer, "key")], mask,
                                             pb.positions, adapter.n_heads)
                vals = block[pb.pair_cell, :, pb.pair_row, pb.pair_col].T.to(dtype)      # [heads, pairs]
                for t in targets:
                    sums[i].index_add_(1, t, vals)
            if embeddings is not None:
                for kind, emb in cell_embeddings(captured, sub).items():
                    embeddings.setdefault(kind, np.zeros((cells.n_cells, adapter.d_model), np.float32))[idx] = \
                        emb.cpu().numpy()
            captured.clear()
    return sums, counts


def extract_attention(adapter: ModelAdapter, cells: TokenizedCells, panel: pd.DataFrame, *,
                      batch_size: int = 8, progress: bool = True) -> AttentionStore:
    """Stream ``cells`` through ``adapter`` and accumulate panel x panel attention (see module doc), capturing
    each cell's embeddings on the way (``cell_embeddings``, used for CSSI strata).

    ``panel`` rows index ``cells.genes`` through ``gene_index``. Peak memory: the model's forward plus
    ``[batch, heads, P, seq]`` for one layer, plus the fixed ``[layers, heads, G, G]`` store.
    """
    n_panel = len(panel)
    embeddings: dict[str, np.ndarray] = {}
    sums, counts = _stream(adapter, cells, panel, groups=np.zeros((cells.n_cells, 1), dtype=np.int64), n_groups=1,
                           layers=tuple(range(adapter.n_layers)), batch_size=batch_size, dtype=torch.float64,
                           progress=progress, embeddings=embeddings)
    params = {"model": adapter.name, "family": adapter.family, "n_layers": adapter.n_layers, "n_heads": adapter.n_heads,
              "batch_size": batch_size, "definition": "sum over cells of A[q,k] (query q attends to key k)",
              "attention_site": "softmax(QK^T/sqrt(d)) recomputed from hooked query/key projections"}
    return AttentionStore(
        sums=sums.view(adapter.n_layers, adapter.n_heads, n_panel, n_panel).cpu().numpy(),
        counts=counts.view(n_panel, n_panel).cpu().numpy(), n_cells=cells.n_cells,
        panel=panel.reset_index(drop=True), params=params, cell_embeddings=embeddings)


def extract_grouped_attention(adapter: ModelAdapter, cells: TokenizedCells, panel: pd.DataFrame,
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
