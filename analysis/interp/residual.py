"""Residual-stream capture at gene positions: the output of each chosen encoder layer (the model-family
seam's ``SiteMap.layer`` site, the residual stream after the layer), read by a forward hook at every position that
holds a gene (special tokens and padding left out) and written to disk batch by batch, so memory holds one batch
whatever the number of cells. The rows go to an :class:`analysis.io.activations.ActivationStore`. For cells only
encoded by trained SAEs (the regulatory test's perturbed cells), :func:`feature_activity` reads the same site and keeps
per-cell feature activity only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io.activations import ActivationStore, layer_file, write_index
from ..models.base import ModelAdapter, TokenizedCells


def capture_residual_stream(adapter: ModelAdapter, cells: TokenizedCells, layers: tuple[int, ...], directory: Path,
                            *, batch_size: int = 8, progress: bool = False) -> ActivationStore:
    """Write ``[rows, d_model]`` float32 per layer in ``layers`` into ``directory``: one row per (cell, gene
    position), in the order of ``cells.batches(batch_size)`` and, within a batch, cell then position; with each
    row's cell (index into ``cells``) and gene (``cells.genes`` row)."""
    bad = [layer for layer in layers if not 0 <= layer < adapter.n_layers]
    if bad or not layers:
        raise ValueError(f"layers {list(layers)} must be a non-empty subset of 0..{adapter.n_layers - 1}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n_rows = int((cells.gene_index >= 0).sum())
    arrays = {layer: np.lib.format.open_memmap(directory / layer_file(layer), mode="w+", dtype=np.float32,
                                               shape=(n_rows, adapter.d_model)) for layer in layers}
    row_cell, row_gene = np.empty(n_rows, np.int32), np.empty(n_rows, np.int32)
    captured: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(_module, _inputs, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = [adapter.module(adapter.sites.layer(layer)).register_forward_hook(keep(layer)) for layer in layers]
    offset = 0
    try:
        for idx in tqdm(list(cells.batches(batch_size)), desc="residual stream", unit="batch", disable=not progress):
            sub = cells.subset(idx)
            adapter.forward(sub, decode=False)
            cell, position = np.nonzero(sub.gene_index >= 0)
            end = offset + cell.size
            rows = (torch.as_tensor(cell, device=adapter.device), torch.as_tensor(position, device=adapter.device))
            for layer in layers:
                arrays[layer][offset:end] = captured[layer][rows].float().cpu().numpy()
            row_cell[offset:end], row_gene[offset:end] = idx[cell], sub.gene_index[cell, position]
            offset = end
            captured.clear()
    finally:
        for handle in handles:
            handle.remove()
    for array in arrays.values():
        array.flush()
    return write_index(directory, layers, row_cell, row_gene, adapter.d_model, batch_size=batch_size)


ENCODE_ROWS = 4096   # positions encoded at once: bounds the [rows, features] pre-activations (V2-316M: 150 MB)


def feature_activity(adapter: ModelAdapter, cells: TokenizedCells, saes: dict, *, batch_size: int = 8
                     ) -> dict[int, np.ndarray]:
    """Per layer of ``saes`` (layer -> :class:`analysis.interp.sae.TopKSAE`): ``[cells, F]`` each feature's mean
    activation over each cell's gene positions, the residual stream after the layer encoded as it passes,
    :data:`ENCODE_ROWS` positions at a time, each position's ``k`` active features added in place (nothing written
    to disk and no dense ``[positions, F]`` codes; the result is the only thing that grows with the cells). Equals
    :func:`analysis.scoring.sae_features.cell_feature_activity` of the same cells' captured latents."""
    out = {layer: np.zeros((cells.n_cells, sae.n_features)) for layer, sae in saes.items()}
    saes = {layer: sae.to(adapter.device) for layer, sae in saes.items()}
    where: dict = {}

    def encode(layer):
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            cell, position = where["rows"]
            sae = saes[layer]
            sums = torch.zeros(where["n"], sae.n_features, dtype=torch.float64, device=hidden.device)
            for start in range(0, cell.numel(), ENCODE_ROWS):     # pre-activations [rows, F] a chunk at a time
                rows = slice(start, start + ENCODE_ROWS)
                indices, values = sae.active(hidden[cell[rows], position[rows]].float())
                sums.index_put_((cell[rows, None].expand_as(indices), indices), values.double(), accumulate=True)
            out[layer][where["idx"]] = (sums / where["count"][:, None]).cpu().numpy()
        return hook

    handles = [adapter.module(adapter.sites.layer(layer)).register_forward_hook(encode(layer)) for layer in saes]
    try:
        with torch.no_grad():
            for idx in cells.batches(batch_size):
                sub = cells.subset(idx)
                genes = sub.gene_index >= 0
                cell, position = np.nonzero(genes)
                where.update(idx=idx, n=len(idx), rows=(adapter.as_tensor(cell), adapter.as_tensor(position)),
                             count=adapter.as_tensor(np.maximum(genes.sum(axis=1), 1).astype(np.float64)))
                adapter.forward(sub, decode=False)
    finally:
        for handle in handles:
            handle.remove()
    return out
