"""Streaming attention extraction into additive gene-pair stores (DESIGN.md sections 3 and 5).

Edge score (paper section 2.1, Supplementary Note 13): summed attention of query gene q on key gene k over
cells, divided by the number of cells in which both genes are in the model input. Full attention
``[cells, layers, heads, seq, seq]`` is never materialised: the model runs its fast (SDPA) forward while hooks
on each layer's query/key projections recompute softmax attention only for the rows of panel genes (normalised over
all non-padded keys, exactly as the model does), a chunk of rows at a time, gather the panel columns, and add them
into sums with ``index_add_``. The pooled store (:func:`extract_attention`) keeps what the analyses read: every
head's rows of the source genes (and columns of the reference TFs among them) and each layer's head mean over every
pair, reduced inside the layer's hook so that one layer's projections are alive at a time. Memory is independent of
the number of cells, and stores over disjoint cell shards merge by summation. The sites come from the model family's
adapter (:class:`analysis.models.base.SiteMap`): separate BERT projections for Geneformer, the q and k blocks of
scGPT's packed ``Wqkv``; the same loop serves both.

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

from ..io.stores import (AttentionStore, GroupedAttention, column_count, full_head_name, narrowest_count_dtype,
                          source_genes)
from ..models.base import ModelAdapter, TokenizedCells


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


@dataclass(frozen=True)
class BatchLayout:
    """Where the panel and source genes sit in one padded batch (-1 = padding). ``positions``/``genes``: ``[batch,
    P]`` sequence position and panel index of each panel gene in the cell, the cell's source genes first (those
    whose columns are kept before the others); ``sources``: ``[batch, Rb]`` source index (0..R-1) of the first ``Rb``
    of them (-1 past the cell's own source genes), so a cell's source rows are the leading rows of any ``[.., P, ..]``
    block read at ``positions``; ``column_sources``: ``[batch, Cb]`` the leading ``Cb`` of ``sources`` with -1 where
    the source's columns are not kept (source index >= ``n_columns``)."""

    positions: torch.Tensor
    genes: torch.Tensor
    sources: torch.Tensor
    column_sources: torch.Tensor


def _padded(rows: list[np.ndarray], fill: int) -> np.ndarray:
    out = np.full((len(rows), max(max((r.size for r in rows), default=0), 1)), fill, dtype=np.int64)
    for b, r in enumerate(rows):
        out[b, : r.size] = r
    return out


def batch_layout(gene_index: np.ndarray, panel_of_gene: np.ndarray, source_of_panel: np.ndarray,
                 device: torch.device, n_columns: int | None = None) -> BatchLayout:
    """:class:`BatchLayout` of a batch's ``gene_index`` ``[batch, seq]`` (-1 = not a gene); ``panel_of_gene``: panel
    index of each vocabulary gene or -1; ``source_of_panel``: source index of each panel gene or -1; ``n_columns``:
    the sources ``0..n_columns-1`` whose columns are kept (default: every source)."""
    n_columns = int(source_of_panel.max(initial=-1)) + 1 if n_columns is None else n_columns
    slot = np.where(gene_index >= 0, panel_of_gene[np.maximum(gene_index, 0)], -1)        # [batch, seq]
    pos = []
    for row in slot:
        at = np.nonzero(row >= 0)[0]
        source = source_of_panel[row[at]]
        rank = np.where(source < 0, 2, np.where(source < n_columns, 0, 1))     # column sources, other sources, rest
        pos.append(at[np.argsort(rank, kind="stable")])
    genes = [row[p] for row, p in zip(slot, pos)]
    sources = [source_of_panel[g][source_of_panel[g] >= 0] for g in genes]
    columns = [s[s < n_columns] for s in sources]
    arrays = (_padded(pos, 0), _padded(genes, -1), _padded(sources, -1), _padded(columns, -1))
    return BatchLayout(*(torch.as_tensor(a, device=device) for a in arrays))


def count_pairs(cells: TokenizedCells, panel_of_gene: np.ndarray, n_panel: int, groups: np.ndarray | None = None,
                n_groups: int = 1, block: int = 1024) -> np.ndarray:
    """``[n_groups, G, G]`` co-occurrence counts: cells of each group in which both panel genes are in the model
    input (diagonal: cells holding the gene), in the narrowest unsigned type that holds the largest group.
    ``groups``: ``[cells, groupings]`` group of each cell in each grouping (None: one group of every cell). Each
    group's count is ``X^T X`` over its cells' ``[cells, G]`` presence, ``block`` cells at a time (float32 products
    of 0/1 are exact below 2^24 cells)."""
    groups = np.zeros((cells.n_cells, 1), dtype=np.int64) if groups is None else np.asarray(groups)
    members = [np.nonzero((groups == g).any(axis=1))[0] for g in range(n_groups)]
    out = np.zeros((n_groups, n_panel, n_panel), narrowest_count_dtype(max((m.size for m in members), default=0)))
    for g, cells_of_group in enumerate(members):
        total = np.zeros((n_panel, n_panel))
        for start in range(0, cells_of_group.size, block):
            index = cells.gene_index[cells_of_group[start:start + block]]
            slot = np.where(index >= 0, panel_of_gene[np.maximum(index, 0)], -1)
            present = np.zeros((index.shape[0], n_panel + 1), dtype=np.float32)
            present[np.arange(index.shape[0])[:, None], slot] = 1.0                  # -1 lands in the spare column
            x = present[:, :n_panel]
            total += x.T @ x
        out[g] = total
    return out


def _strided(flat: torch.Tensor, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    """A host numpy view of an accumulator without its dump slot (no copy on the CPU)."""
    return flat.as_strided(shape, strides).cpu().numpy()


class AttentionSums:
    """Device accumulators of the attention stores, filled one batch and one layer at a time: for each kept layer,
    every head's rows at the ``R`` source genes and its columns at the first ``C`` of them (``n_columns``), the head
    mean over every panel pair, and the heads asked for whole, per cell group (the pooled store is one group of every
    cell; CSSI's grouped store one group per fine cluster and per random group, a cell adding to one group of each
    grouping). Each flat accumulator has one extra slot at its end that padded entries are added into and that
    is dropped at the end, so no boolean compaction runs per batch.

    Memory per layer and batch: ``[batch, heads, chunk, seq]`` scores, with the chunk of panel rows sized to
    ``chunk_bytes``; source rows are the leading rows of each cell's layout (:func:`batch_layout`), so they are read
    from the same chunks with no softmax of their own. The accumulators are fixed: ``groups x layers x (heads x (R +
    C) x G x 4 + G^2 x itemsize(layer_dtype))`` bytes, plus ``G^2 x 8`` per whole head."""

    def __init__(self, layers: tuple[int, ...], n_heads: int, n_panel: int, n_sources: int, *, n_groups: int = 1,
                 n_columns: int | None = None, full_heads: tuple[tuple[int, int], ...] = (),
                 layer_dtype: torch.dtype = torch.float64, device: torch.device = torch.device("cpu"),
                 chunk_bytes: int = 256 * 2 ** 20):
        g, r, n = n_panel, n_sources, len(layers)
        c = r if n_columns is None else n_columns
        if not 0 <= c <= r:
            raise ValueError(f"n_columns must be between 0 and the {r} sources, got {c}")
        self.slot = {layer: i for i, layer in enumerate(layers)}
        self.n_heads, self.n_panel, self.n_sources, self.n_columns, self.n_groups = n_heads, g, r, c, n_groups
        self.head_rows = torch.zeros(n, n_heads, n_groups * r * g + 1, dtype=torch.float32, device=device)
        self.head_cols = (torch.zeros(n, n_heads, n_groups * c * g + 1, dtype=torch.float32, device=device)
                          if c else None)
        self.layer_sums = torch.zeros(n, n_groups * g * g + 1, dtype=layer_dtype, device=device)
        self.full = {key: torch.zeros(n_groups * g * g + 1, dtype=torch.float64, device=device) for key in full_heads}
        self.chunk_bytes = chunk_bytes
        self.layout: BatchLayout | None = None
        self.key_mask: torch.Tensor | None = None
        self.groups: torch.Tensor | None = None

    def start_batch(self, layout: BatchLayout, key_mask: torch.Tensor, groups: torch.Tensor | None = None) -> None:
        """Set the batch the next :meth:`add_layer` calls read; ``groups``: ``[batch, groupings]`` group of each cell
        in each grouping (None: group 0)."""
        self.layout, self.key_mask = layout, key_mask
        self.groups = (torch.zeros(layout.genes.shape[0], 1, dtype=torch.int64, device=layout.genes.device)
                       if groups is None else groups)

    def _targets(self, rows: torch.Tensor, cols: torch.Tensor, n_rows: int) -> list[torch.Tensor]:
        """Per grouping, flat ``[batch * r * c]`` indices ``group * n_rows * G + row * G + col`` of ``rows`` ``[batch,
        r]`` x ``cols`` ``[batch, c]``, with any -1 sent to the dump slot."""
        block = n_rows * self.n_panel
        flat = rows[:, :, None] * self.n_panel + cols[:, None, :]
        valid = (rows[:, :, None] >= 0) & (cols[:, None, :] >= 0)
        return [torch.where(valid, flat + self.groups[:, c, None, None] * block, self.n_groups * block).reshape(-1)
                for c in range(self.groups.shape[1])]

    def add_layer(self, layer: int, query: torch.Tensor, key: torch.Tensor) -> None:
        """Reduce one layer's projections ``[batch, seq, heads*d_head]`` of the current batch into the sums (a layer
        not kept is ignored)."""
        if layer not in self.slot:
            return
        i, lay, h = self.slot[layer], self.layout, self.n_heads
        b, seq = key.shape[:2]
        n_rows, n_src = lay.positions.shape[1], lay.sources.shape[1] if self.n_sources else 0
        chunk = max(1, self.chunk_bytes // (b * h * seq * 4))
        for start in range(0, n_rows, chunk):
            rows = slice(start, start + chunk)
            probs = panel_rows_attention(query, key, self.key_mask, lay.positions[:, rows], h, lay.positions)
            genes = lay.genes[:, rows]                                                    # [b, c]
            mean = probs.mean(1).reshape(-1).to(self.layer_sums.dtype)
            for flat in self._targets(genes, lay.genes, self.n_panel):
                self.layer_sums[i].index_add_(0, flat, mean)
                for (full_layer, head), sums in self.full.items():
                    if full_layer == layer:
                        sums.index_add_(0, flat, probs[:, head].reshape(-1).double())
            if start < n_src:                                       # the leading rows are the cells' source genes
                forward = probs[:, :, : n_src - start]                                   # [b, h, cs, P]
                values = forward.permute(1, 0, 2, 3).reshape(h, -1).float()
                for flat in self._targets(lay.sources[:, rows], lay.genes, self.n_sources):
                    self.head_rows[i].index_add_(1, flat, values)
            if self.head_cols is not None:                          # column sources lead the source rows
                n_col = lay.column_sources.shape[1]
                backward = probs[:, :, :, :n_col]                                         # [b, h, c, Cb]
                values = backward.permute(1, 0, 2, 3).reshape(h, -1).float()
                for flat in self._targets(lay.column_sources, genes, self.n_columns):
                    flat = flat.reshape(b, n_col, -1).transpose(1, 2).reshape(-1)
                    self.head_cols[i].index_add_(1, flat, values)

    def pooled(self) -> dict[str, np.ndarray]:
        """One group's sums without their dump slots, shaped as :class:`~analysis.io.stores.AttentionStore` holds
        them: ``head_rows`` ``[layers, heads, R, G]``, ``head_cols`` ``[layers, heads, C, G]``, ``layer_sums``
        ``[layers, G, G]``, ``full_heads``."""
        g, r, c, (n, h, width) = self.n_panel, self.n_sources, self.n_columns, self.head_rows.shape
        cols = (n, h, c, g)
        return {"head_rows": _strided(self.head_rows, (n, h, r, g), (h * width, width, g, 1)),
                "head_cols": (_strided(self.head_cols, cols, (h * self.head_cols.shape[2], self.head_cols.shape[2],
                                                              g, 1))
                              if self.head_cols is not None else np.zeros(cols, dtype=np.float32)),
                "layer_sums": _strided(self.layer_sums, (n, g, g), (g * g + 1, g, 1)),
                "full_heads": {full_head_name(*k): v[: g * g].reshape(g, g).cpu().numpy()
                               for k, v in self.full.items()}}

    def grouped(self) -> dict[str, np.ndarray]:
        """Per group: ``head_rows`` ``[groups, layers, heads, R, G]``, ``head_cols`` ``[groups, layers, heads, C, G]``
        (None without columns), ``layer_sums`` ``[groups, layers, G, G]`` (views of the accumulators)."""
        g, r, c, k, (n, h, width) = self.n_panel, self.n_sources, self.n_columns, self.n_groups, self.head_rows.shape
        cols_width = self.head_cols.shape[2] if self.head_cols is not None else 0
        return {"head_rows": _strided(self.head_rows, (k, n, h, r, g), (r * g, h * width, width, g, 1)),
                "head_cols": (_strided(self.head_cols, (k, n, h, c, g), (c * g, h * cols_width, cols_width, g, 1))
                              if self.head_cols is not None else None),
                "layer_sums": _strided(self.layer_sums, (k, n, g, g), (g * g, k * g * g + 1, g, 1))}


def _panel_index(cells: TokenizedCells, panel: pd.DataFrame, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Panel index of each vocabulary gene of ``cells`` and source index of each panel gene (-1 = none)."""
    panel_of_gene = np.full(len(cells.genes), -1, dtype=np.int64)
    panel_of_gene[panel["gene_index"].to_numpy()] = np.arange(len(panel))
    source_of_panel = np.full(len(panel), -1, dtype=np.int64)
    source_of_panel[sources] = np.arange(sources.size)
    return panel_of_gene, source_of_panel


def _accumulate(adapter: ModelAdapter, cells: TokenizedCells, panel: pd.DataFrame, sources: np.ndarray,
                acc: AttentionSums, *, groups: np.ndarray | None, batch_size: int, progress: bool,
                embeddings: dict[str, np.ndarray] | None = None) -> None:
    """One pass of ``cells`` through ``adapter`` with ``acc`` reducing every layer inside its hook; cell embeddings
    are written into ``embeddings`` (kind -> ``[cells, d_model]``) when given."""
    panel_of_gene, source_of_panel = _panel_index(cells, panel, sources)
    dev = adapter.device
    with capture_projections(adapter, cls=embeddings is not None, on_layer=acc.add_layer) as captured:
        for idx in tqdm(list(cells.batches(batch_size)), desc="attention", unit="batch", disable=not progress):
            sub = cells.subset(idx)
            acc.start_batch(batch_layout(sub.gene_index, panel_of_gene, source_of_panel, dev, acc.n_columns),
                            torch.as_tensor(sub.attention_mask, device=dev).bool(),
                            None if groups is None else torch.as_tensor(groups[idx], device=dev))
            adapter.forward(sub)
            if embeddings is not None:
                for kind, emb in cell_embeddings(captured, sub).items():
                    embeddings.setdefault(kind, np.zeros((cells.n_cells, adapter.d_model), np.float32))[idx] = \
                        emb.cpu().numpy()
            captured.clear()


def extract_attention(adapter: ModelAdapter, cells: TokenizedCells, panel: pd.DataFrame, *,
                      sources: np.ndarray | None = None, n_columns: int | None = None,
                      full_heads: tuple[tuple[int, int], ...] = (), batch_size: int = 8,
                      chunk_bytes: int = 256 * 2 ** 20, progress: bool = True) -> AttentionStore:
    """Stream ``cells`` through ``adapter`` into an :class:`~analysis.io.stores.AttentionStore` (module doc),
    capturing each cell's embeddings on the way (``cell_embeddings``, used for CSSI strata).

    ``panel`` rows index ``cells.genes`` through ``gene_index``; ``sources``: panel indices whose rows every head
    keeps, and ``n_columns``: how many leading ones have their columns kept too (default: the panel's
    :func:`~analysis.io.stores.source_genes` and their :func:`~analysis.io.stores.column_count`; given ``sources``,
    every one of them); ``full_heads``: (layer, head) pairs kept whole. Peak memory: the model's forward, one layer's
    query/key projections, ``[batch, heads, chunk, seq]`` scores of ``chunk_bytes`` (:class:`AttentionSums`) and the
    fixed store.
    """
    if sources is None:
        sources = source_genes(panel)
        n_columns = column_count(panel, sources) if n_columns is None else n_columns
    sources = np.asarray(sources, dtype=np.int64)
    bad = [f"L{l}H{h}" for l, h in full_heads if not (0 <= l < adapter.n_layers and 0 <= h < adapter.n_heads)]
    if bad:
        raise ValueError(f"heads {bad} asked for whole are not in the model ({adapter.n_layers} layers x "
                         f"{adapter.n_heads} heads)")
    acc = AttentionSums(tuple(range(adapter.n_layers)), adapter.n_heads, len(panel), sources.size,
                        n_columns=n_columns, full_heads=tuple(full_heads), device=adapter.device,
                        chunk_bytes=chunk_bytes)
    embeddings: dict[str, np.ndarray] = {}
    _accumulate(adapter, cells, panel, sources, acc, groups=None, batch_size=batch_size, progress=progress,
                embeddings=embeddings)
    arrays = acc.pooled()
    counts = count_pairs(cells, _panel_index(cells, panel, sources)[0], len(panel))[0]
    params = {"model": adapter.name, "family": adapter.family, "n_layers": adapter.n_layers, "n_heads": adapter.n_heads,
              "batch_size": batch_size, "definition": "sum over cells of A[q,k] (query q attends to key k)",
              "attention_site": "softmax(QK^T/sqrt(d)) recomputed from hooked query/key projections",
              "kept": "per head: source genes' rows, and columns of the first n_columns (reference TFs, genes asked "
                      "for); per layer: head mean over every panel pair",
              "n_sources": int(sources.size), "n_columns": int(acc.n_columns),
              "full_heads": [full_head_name(*k) for k in full_heads]}
    return AttentionStore(sources, arrays["head_rows"], arrays["head_cols"], arrays["layer_sums"],
                          counts.astype(narrowest_count_dtype(cells.n_cells)), cells.n_cells,
                          panel.reset_index(drop=True), params, arrays["full_heads"], embeddings)


def extract_grouped_attention(adapter: ModelAdapter, cells: TokenizedCells, panel: pd.DataFrame,
                              groups: np.ndarray, n_groups: int, *, layers: tuple[int, ...], sources: np.ndarray,
                              keep_cols: bool = False, batch_size: int = 8, chunk_bytes: int = 256 * 2 ** 20,
                              progress: bool = True) -> GroupedAttention:
    """Attention of ``layers`` accumulated per cell group (:class:`~analysis.io.stores.GroupedAttention`): one
    extraction pass whatever the number of groups. ``groups``: ``[cells, n_groupings]`` group of each cell in each
    grouping; ``sources``: panel indices whose per-head rows are kept (``np.arange(G)`` keeps every head whole);
    ``keep_cols``: keep their columns too (read by the target -> TF direction). Memory: the store
    (:func:`~analysis.io.stores.grouped_store_bytes`) on top of a plain extraction's forward."""
    sources = np.asarray(sources, dtype=np.int64)
    full = sources.size == len(panel)
    acc = AttentionSums(tuple(layers), adapter.n_heads, len(panel), sources.size, n_groups=n_groups,
                        n_columns=sources.size if keep_cols and not full else 0, layer_dtype=torch.float32,
                        device=adapter.device, chunk_bytes=chunk_bytes)
    _accumulate(adapter, cells, panel, sources, acc, groups=np.asarray(groups, dtype=np.int64),
                batch_size=batch_size, progress=progress)
    arrays = acc.grouped()
    counts = count_pairs(cells, _panel_index(cells, panel, sources)[0], len(panel), groups, n_groups)
    return GroupedAttention(sources, arrays["head_rows"], arrays["head_cols"], arrays["layer_sums"], counts,
                            tuple(layers), panel.reset_index(drop=True))
