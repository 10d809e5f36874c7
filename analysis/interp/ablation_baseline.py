"""The unablated pass of an ablation, kept on disk so that later interventions on the same cells compare against it
without running it again (the live ablation of the app: "unablated pass cached per run").

What an intervention's read-outs need of the baseline, per batch of :meth:`TokenizedCells.batches` (same cells,
same masking, same batch size): the hidden states ``[L + 1, b, s, d]`` of the unmasked input (fidelity's per-layer
cosine distance, and the layers an intervention leaves alone, replayed) and of the masked input (replayed), and
the output the output-distance read-out compares (a token-predicting model's decoder inputs ``[b, s, d]``, else its
prediction ``[b, s]``), in the model's dtype, so reuse is exact; and the baseline's own per-cell read-outs (loss,
accuracy, target recall, read-out-layer attention sums and pair counts). Batches are written as ``.npy`` files
into a partial directory that is renamed into place when the pass is complete, so a killed job leaves nothing a
later one would read; a complete store is read memory-mapped, one batch at a time (memory stays one batch).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

READOUTS = ("loss", "accuracy", "hidden_cos", "output_cos", "target_recall", "sums", "counts")


def baseline_bytes(n_cells: int, mean_length: float, n_layers: int, d_model: int, itemsize: int) -> float:
    """Bytes a baseline of ``n_cells`` cells of ``mean_length`` tokens takes on disk (both inputs' hidden states and
    the decoder inputs), to decide whether it is worth keeping."""
    return n_cells * mean_length * d_model * (2 * n_layers + 3) * itemsize


class BaselineStore:
    """One baseline pass in ``directory`` (module doc). ``complete`` says whether it can be read; otherwise
    :meth:`write_batch` fills a partial directory and :meth:`finish` publishes it."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._partial = self.directory.with_name(f".{self.directory.name}.partial-{uuid.uuid4().hex[:8]}")

    @property
    def complete(self) -> bool:
        return (self.directory / "readouts.npz").is_file()

    def write_batch(self, batch: int, hidden: tuple, masked_hidden: tuple, output) -> None:
        """Keep batch ``batch``'s hidden states of the unmasked and the masked input (L + 1 tensors ``[b, s, d]``
        each) and output tensor."""
        self._partial.mkdir(parents=True, exist_ok=True)
        for name, states in (("hidden", hidden), ("masked", masked_hidden)):
            np.save(self._partial / f"{name}-{batch}.npy", np.stack([h.detach().cpu().numpy() for h in states]))
        np.save(self._partial / f"output-{batch}.npy", output.detach().cpu().numpy())

    def read_batch(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hidden ``[L + 1, b, s, d]``, masked input's hidden ``[L + 1, b, s, d]``, output) of batch ``batch``,
        memory-mapped."""
        return tuple(np.load(self.directory / f"{name}-{batch}.npy", mmap_mode="r")
                     for name in ("hidden", "masked", "output"))

    def finish(self, readouts: dict[str, np.ndarray], params: dict) -> None:
        """Write the baseline's per-cell read-outs (:data:`READOUTS`) and publish the directory atomically (a
        concurrent writer of the same baseline loses the race harmlessly)."""
        self._partial.mkdir(parents=True, exist_ok=True)
        np.savez(self._partial / "readouts.npz", **{k: readouts[k] for k in READOUTS})
        (self._partial / "params.json").write_text(json.dumps(params, indent=1, default=str))
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self._partial, self.directory)
        except OSError:   # another job published the same baseline first
            shutil.rmtree(self._partial, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self._partial, ignore_errors=True)

    def params(self) -> dict:
        """What :meth:`finish` recorded: ``output`` (``features`` or ``prediction``), ``n_cells``, ``batch_size``."""
        return json.loads((self.directory / "params.json").read_text())

    def readouts(self) -> dict[str, np.ndarray]:
        with np.load(self.directory / "readouts.npz") as f:
            return {k: f[k] for k in READOUTS}
