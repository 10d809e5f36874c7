"""Streaming attention extraction into additive gene-pair stores (DESIGN.md sections 3 and 5).

Edge score (paper section 2.1, Supplementary Note 13): summed attention of query gene q on key gene k over
cells, divided by the number of cells in which both genes are in the model input. Full attention
``[cells, layers, heads, seq, seq]`` is never materialised: the model runs its fast (SDPA) forward while hooks
on each layer's query/key projections recompute softmax attention only for the rows of panel genes (normalised over
all non-padded keys, exactly as the model does), a chunk of rows at a time, gather the panel columns, and add them
into sums with ``index_add_``. The pooled store (:func:`extract_attention`) keeps what the analyses read: every
head's rows and columns of the source genes and each layer's head mean over every pair, reduced inside the layer's
hook so that one layer's projections are alive at a time. Memory is independent of the number of cells, and stores
over disjoint cell shards merge by summation. The sites come from the
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
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..io.stores import AttentionStore, GroupedAttention, full_head_name, narrowest_count_dtype, source_genes
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
def capture_projections(adapter: ModelAdapter, *, cls: bool = False,
                        on_layer: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> Iterator[dict]:
    """Forward hooks keeping each layer's query and key projections ``[batch, seq, heads*d_head]`` (keys
    ``(layer, "query")`` / ``(layer, "key")``), the hidden states entering the last layer (``"penultimate"``,
    ``[batch, seq, d_model]``) and, with ``cls``, the last layer's output (``"final"``). One hook per module, so a
    packed projection is hooked once and sliced. With ``on_layer``, a layer's query and key are handed to
    ``on_layer(layer, query, key)`` as soon as both exist and are then dropped, so one layer's projections are held
    at a time instead of every layer's (at V2-316M's 4,096 tokens, 8 cells: 300 MB instead of 5.4 GB)."""
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
            if on_layer is not None:
                for (layer, _kind), _site in entries:
                    if (layer, "query") in captured and (layer, "key") in captured:
                        on_layer(layer, captured.pop((layer, "query")), captured.pop((layer, "key")))
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
                         n_heads: int, columns: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention of the rows at ``positions`` over all keys, then restricted to the ``columns`` positions
    (default: the same positions).

    ``query``/``key``: ``[batch, seq, heads*d_head]`` projections; ``key_mask``: ``[batch, seq]`` bool (True =
    real token); ``positions``: ``[batch, P]`` sequence positions of the query genes; ``columns``: ``[batch, C]``
    those of the key genes. Returns ``[batch, heads, P, C]`` in float32 (float64 for float64 inputs), identical to
    the model's eager ``softmax(QK^T / sqrt(d_head) + mask)`` at those rows/columns.
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
    columns = positions if columns is None else columns
    col = columns[:, None, None, :].expand(-1, n_heads, probs.shape[2], -1)
    return torch.gather(probs, 3, col)                                                   # [b, h, P, C]


def _stream(adapter: ModelAdapter, cells: TokenizedCells, panel: pd.DataFrame, *, groups: np.ndarray,
            n_groups: int, layers: tuple[int, ...], batch_size: int, dtype: torch.dtype, progress: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The extraction loop (module doc). ``groups``: ``[cells, n_groupings]`` group index of each cell in each
    grouping (every cell adds to one group per column). Returns sums ``[len(layers), heads, n_groups * G * G]``
    and counts ``[n_groups * G * G]``."""
    n_panel = len(panel)
    panel_of_gene = np.full(len(cells.genes), -1, dtype=np.int64)
    panel_of_gene[panel["gene_index"].to_numpy()] = np.arange(n_panel)
    dev = adapter.device
    block_size = n_panel * n_panel
    sums = torch.zeros(len(layers), adapter.n_heads, n_groups * block_size, dtype=dtype, device=dev)
    counts = torch.zeros(n_groups * block_size, dtype=torch.int64, device=dev)
    group_of = torch.as_tensor(groups, device=dev)
    with capture_projections(adapter) as captured:
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
            captured.clear()
    return sums, counts


@dataclass(frozen=True)
class BatchLayout:
    """Where the panel and source genes sit in one padded batch (-1 = padding). ``positions``/``genes``: ``[batch,
    P]`` sequence position and panel index of each panel gene in the cell; ``source_positions``/``sources``/
    ``source_columns``: ``[batch, Rb]`` sequence position, source index (0..R-1) and column within ``positions`` of
    each source gene in the cell."""

    positions: torch.Tensor
    genes: torch.Tensor
    source_positions: torch.Tensor
    sources: torch.Tensor
    source_columns: torch.Tensor


def _padded(rows: list[np.ndarray], fill: int) -> np.ndarray:
    out = np.full((len(rows), max(max((r.size for r in rows), default=0), 1)), fill, dtype=np.int64)
    for b, r in enumerate(rows):
        out[b, : r.size] = r
    return out


def batch_layout(gene_index: np.ndarray, panel_of_gene: np.ndarray, source_of_panel: np.ndarray,
                 device: torch.device) -> BatchLayout:
    """:class:`BatchLayout` of a batch's ``gene_index`` ``[batch, seq]`` (-1 = not a gene); ``panel_of_gene``: panel
    index of each vocabulary gene or -1; ``source_of_panel``: source index of each panel gene or -1."""
    slot = np.where(gene_index >= 0, panel_of_gene[np.maximum(gene_index, 0)], -1)        # [batch, seq]
    pos = [np.nonzero(row >= 0)[0] for row in slot]
    genes = [row[p] for row, p in zip(slot, pos)]
    src_col = [np.nonzero(source_of_panel[g] >= 0)[0] for g in genes]
    arrays = (_padded(pos, 0), _padded(genes, -1), _padded([p[c] for p, c in zip(pos, src_col)], 0),
              _padded([source_of_panel[g[c]] for g, c in zip(genes, src_col)], -1), _padded(src_col, 0))
    return BatchLayout(*(torch.as_tensor(a, device=device) for a in arrays))


class PooledSums:
    """Device accumulators of :class:`~analysis.io.stores.AttentionStore` (its docstring gives the shapes), filled one
    batch and one layer at a time. Each flat accumulator has one extra slot at its end that padded entries are added
    into and that is dropped at the end, so no boolean compaction runs per batch.

    Memory per layer and batch: ``[batch, heads, chunk, seq]`` scores, with the chunk of panel rows sized to
    ``chunk_bytes``; the accumulators are fixed (``2 x layers x heads x R x G x 4 + layers x G^2 x 8`` bytes, plus
    ``G^2 x 8`` per whole head)."""

    def __init__(self, n_layers: int, n_heads: int, n_panel: int, n_sources: int, full_heads: tuple[tuple[int, int], ...],
                 device: torch.device, chunk_bytes: int = 256 * 2 ** 20):
        g, r = n_panel, n_sources
        self.n_layers, self.n_heads, self.n_panel, self.n_sources = n_layers, n_heads, g, r
        self.head_rows = torch.zeros(n_layers, n_heads, r * g + 1, dtype=torch.float32, device=device)
        self.head_cols = torch.zeros(n_layers, n_heads, r * g + 1, dtype=torch.float32, device=device)
        self.layer_sums = torch.zeros(n_layers, g * g + 1, dtype=torch.float64, device=device)
        self.counts = torch.zeros(g * g + 1, dtype=torch.int32, device=device)
        self.full = {key: torch.zeros(g * g + 1, dtype=torch.float64, device=device) for key in full_heads}
        self.chunk_bytes = chunk_bytes
        self.layout: BatchLayout | None = None
        self.key_mask: torch.Tensor | None = None

    def start_batch(self, layout: BatchLayout, key_mask: torch.Tensor, *, count: bool = True) -> None:
        """Set the batch the next :meth:`add_layer` calls read, and (``count``) count its co-observed panel pairs."""
        self.layout, self.key_mask = layout, key_mask
        if not count:
            return
        genes = layout.genes
        dump = self.n_panel * self.n_panel
        for row in genes:                                               # one cell at a time: [P, P] indices
            flat = row[:, None] * self.n_panel + row[None, :]
            flat = torch.where((row[:, None] >= 0) & (row[None, :] >= 0), flat, dump).reshape(-1)
            self.counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))

    def _flat(self, rows: torch.Tensor, cols: torch.Tensor, n_rows: int) -> torch.Tensor:
        """``rows[..., :, None] * G + cols[..., None, :]`` with any -1 sent to the dump slot ``n_rows * G``."""
        flat = rows[..., :, None] * self.n_panel + cols[..., None, :]
        return torch.where((rows[..., :, None] >= 0) & (cols[..., None, :] >= 0), flat, n_rows * self.n_panel)

    def add_layer(self, layer: int, query: torch.Tensor, key: torch.Tensor) -> None:
        """Reduce one layer's projections ``[batch, seq, heads*d_head]`` of the current batch into the sums."""
        lay, h = self.layout, self.n_heads
        if self.n_sources:
            forward = panel_rows_attention(query, key, self.key_mask, lay.source_positions, h, lay.positions)
            flat = self._flat(lay.sources, lay.genes, self.n_sources).reshape(-1)         # [b * Rb * P]
            self.head_rows[layer].index_add_(1, flat, forward.permute(1, 0, 2, 3).reshape(h, -1).float())
        b, seq = key.shape[:2]
        n_rows = lay.positions.shape[1]
        chunk = max(1, self.chunk_bytes // (b * h * seq * 4))
        for start in range(0, n_rows, chunk):
            rows = slice(start, start + chunk)
            probs = panel_rows_attention(query, key, self.key_mask, lay.positions[:, rows], h, lay.positions)
            genes = lay.genes[:, rows]                                                   # [b, c]
            flat = self._flat(genes, lay.genes, self.n_panel).reshape(-1)                  # [b * c * P]
            self.layer_sums[layer].index_add_(0, flat, probs.mean(1).reshape(-1).double())
            for (full_layer, head), sums in self.full.items():
                if full_layer == layer:
                    sums.index_add_(0, flat, probs[:, head].reshape(-1).double())
            if self.n_sources:
                cols = lay.source_columns[:, None, None, :].expand(-1, h, probs.shape[2], -1)
                backward = torch.gather(probs, 3, cols)                                  # [b, h, c, Rb]
                flat = self._flat(lay.sources, genes, self.n_sources).transpose(1, 2).reshape(-1)
                self.head_cols[layer].index_add_(1, flat, backward.permute(1, 0, 2, 3).reshape(h, -1).float())

    def to_numpy(self) -> dict[str, np.ndarray]:
        """The sums without their dump slots, shaped as :class:`~analysis.io.stores.AttentionStore` holds them."""
        g, r, shape = self.n_panel, self.n_sources, (self.n_layers, self.n_heads, self.n_sources, self.n_panel)
        return {"head_rows": self.head_rows[..., : r * g].reshape(shape).cpu().numpy(),
                "head_cols": self.head_cols[..., : r * g].reshape(shape).cpu().numpy(),
                "layer_sums": self.layer_sums[:, : g * g].reshape(self.n_layers, g, g).cpu().numpy(),
                "counts": self.counts[: g * g].reshape(g, g).cpu().numpy(),
                "full_heads": {full_head_name(*k): v[: g * g].reshape(g, g).cpu().numpy() for k, v in self.full.items()}}


def extract_attention(adapter: ModelAdapter, cells: TokenizedCells, panel: pd.DataFrame, *,
                      sources: np.ndarray | None = None, full_heads: tuple[tuple[int, int], ...] = (),
                      batch_size: int = 8, chunk_bytes: int = 256 * 2 ** 20, progress: bool = True
                      ) -> AttentionStore:
    """Stream ``cells`` through ``adapter`` into an :class:`~analysis.io.stores.AttentionStore` (module doc),
    capturing each cell's embeddings on the way (``cell_embeddings``, used for CSSI strata).

    ``panel`` rows index ``cells.genes`` through ``gene_index``; ``sources``: panel indices whose rows and columns
    every head keeps (default :func:`~analysis.io.stores.source_genes`); ``full_heads``: (layer, head) pairs kept
    whole. Peak memory: the model's forward, one layer's query/key projections, ``[batch, heads, chunk, seq]`` scores
    of ``chunk_bytes`` (:class:`PooledSums`) and the fixed store.
    """
    n_panel = len(panel)
    sources = source_genes(panel) if sources is None else np.asarray(sources, dtype=np.int64)
    bad = [f"L{l}H{h}" for l, h in full_heads if not (0 <= l < adapter.n_layers and 0 <= h < adapter.n_heads)]
    if bad:
        raise ValueError(f"heads {bad} asked for whole are not in the model ({adapter.n_layers} layers x "
                         f"{adapter.n_heads} heads)")
    panel_of_gene = np.full(len(cells.genes), -1, dtype=np.int64)
    panel_of_gene[panel["gene_index"].to_numpy()] = np.arange(n_panel)
    source_of_panel = np.full(n_panel, -1, dtype=np.int64)
    source_of_panel[sources] = np.arange(sources.size)
    dev = adapter.device
    acc = PooledSums(adapter.n_layers, adapter.n_heads, n_panel, sources.size, tuple(full_heads), dev, chunk_bytes)
    embeddings: dict[str, np.ndarray] = {}
    with capture_projections(adapter, cls=True, on_layer=acc.add_layer) as captured:
        for idx in tqdm(list(cells.batches(batch_size)), desc="attention", unit="batch", disable=not progress):
            sub = cells.subset(idx)
            acc.start_batch(batch_layout(sub.gene_index, panel_of_gene, source_of_panel, dev),
                            torch.as_tensor(sub.attention_mask, device=dev).bool())
            adapter.forward(sub)
            for kind, emb in cell_embeddings(captured, sub).items():
                embeddings.setdefault(kind, np.zeros((cells.n_cells, adapter.d_model), np.float32))[idx] = \
                    emb.cpu().numpy()
            captured.clear()
    arrays = acc.to_numpy()
    params = {"model": adapter.name, "family": adapter.family, "n_layers": adapter.n_layers, "n_heads": adapter.n_heads,
              "batch_size": batch_size, "definition": "sum over cells of A[q,k] (query q attends to key k)",
              "attention_site": "softmax(QK^T/sqrt(d)) recomputed from hooked query/key projections",
              "kept": "per head: source genes' rows and columns; per layer: head mean over every panel pair",
              "n_sources": int(sources.size), "full_heads": [full_head_name(*k) for k in full_heads]}
    return AttentionStore(sources, arrays["head_rows"], arrays["head_cols"], arrays["layer_sums"],
                          arrays["counts"].astype(narrowest_count_dtype(cells.n_cells)), cells.n_cells,
                          panel.reset_index(drop=True), params, arrays["full_heads"], embeddings)


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
