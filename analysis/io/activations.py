"""ActivationStore: residual-stream activations at gene positions, on disk. One directory holds, per
captured layer, ``residual_L<layer>.npy`` ``[rows, d_model]`` float32 (read memory-mapped), and for every row the
cell (``row_cell.npy``, index into the run's attention cells) and the gene (``row_gene.npy``, index into the
tokenised genes) it was read at; ``activations.json`` names the layers and shapes. Rows are in the order the capture
ran its batches (:func:`analysis.interp.residual.capture_residual_stream`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np

from . import mapped

PARAMS = "activations.json"
ROW_CELL = "row_cell.npy"
ROW_GENE = "row_gene.npy"


def layer_file(layer: int) -> str:
    return f"residual_L{layer}.npy"


def write_index(directory: Path, layers, row_cell: np.ndarray, row_gene: np.ndarray, d_model: int,
                **params) -> "ActivationStore":
    """Finish a store whose layer files are written: each row's cell and gene, and ``activations.json``."""
    directory = Path(directory)
    np.save(directory / ROW_CELL, row_cell)
    np.save(directory / ROW_GENE, row_gene)
    (directory / PARAMS).write_text(json.dumps({"layers": [int(x) for x in layers], "n_rows": int(row_cell.size),
                                                "d_model": int(d_model), **params}))
    return ActivationStore.open(directory)


@dataclass(frozen=True)
class ActivationStore:
    directory: Path
    layers: tuple[int, ...]
    n_rows: int
    d_model: int

    @classmethod
    def open(cls, directory: Path) -> "ActivationStore":
        params = json.loads((Path(directory) / PARAMS).read_text())
        return cls(Path(directory), tuple(params["layers"]), int(params["n_rows"]), int(params["d_model"]))

    def layer(self, layer: int) -> np.ndarray:
        """``[rows, d_model]`` float32, memory-mapped."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not captured (captured: {list(self.layers)})")
        return mapped.load(self.directory / layer_file(layer))

    @cached_property
    def row_cell(self) -> np.ndarray:
        return np.load(self.directory / ROW_CELL)

    @cached_property
    def row_gene(self) -> np.ndarray:
        return np.load(self.directory / ROW_GENE)

    def batches(self, layer: int, batch_size: int, *, seed: int | None = None) -> Iterator[np.ndarray]:
        """Rows of one layer ``batch_size`` at a time (one contiguous read each), in order or, with ``seed``, in a
        seeded order of the batches: memory holds one batch whatever the number of rows."""
        array = self.layer(layer)
        starts = np.arange(0, self.n_rows, batch_size)
        if seed is not None:
            starts = np.random.default_rng(seed).permutation(starts)
        for start in starts:
            yield np.asarray(array[start:start + batch_size])


def shuffled_copy(store: ActivationStore, layer: int, directory: Path, seed: int) -> ActivationStore:
    """One layer's activations with every dimension permuted independently across the rows (each dimension's
    values kept, their joint structure destroyed: the SAE positive control's null), written as a store of its own
    in ``directory``; the layer is read into memory once."""
    x = np.array(store.layer(layer))
    rng = np.random.default_rng([seed, 23])
    for j in range(x.shape[1]):
        x[:, j] = x[rng.permutation(x.shape[0]), j]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / layer_file(layer), x)
    return write_index(directory, [layer], store.row_cell, store.row_gene, store.d_model)
