"""Attention extraction sharded over a Dask cluster: ``precompute.py --scheduler ADDRESS`` (an
existing ``dask.distributed`` scheduler) or ``--workers N`` (a local cluster of N single-threaded processes).

The cells, in the order the single-process extraction batches them (:meth:`TokenizedCells.batches`: longest
first), are cut into shards of whole batches, so every batch a worker runs is the batch one process would run,
padded the same: per-batch attention is identical and only the float64 sums across batches are added in another
order. Each shard is one task: its worker rebuilds the model once (:func:`worker_adapter`, kept for the worker's
life), extracts the shard's pooled store (:func:`analysis.interp.attention.extract_attention`) and writes it under
the run's partial directory, published by a rename, so a shard on disk is complete. A task whose worker dies is
retried by the scheduler (``retries``); a resumed run finds the finished shards and submits only the others. The
shards' stores merge by summation (counts exactly), the cell embeddings go back to the cells' rows.
"""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from distributed.diagnostics.plugin import WorkerPlugin

from ..errors import InputError
from ..interp.attention import extract_attention
from ..io.stores import AttentionStore, narrowest_count_dtype
from ..models.base import ModelAdapter, TokenizedCells, load_adapter

log = logging.getLogger("precompute")
_ADAPTERS: dict = {}   # per worker process: ModelSpec -> loaded adapter


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to rebuild the run's model: the checkpoint directory and how it was loaded."""

    path: str
    family: str
    device: str
    random_init: bool
    seed: int

    @classmethod
    def of(cls, adapter: ModelAdapter, path: Path, device: str, random_init: bool, seed: int) -> "ModelSpec":
        return cls(str(path), adapter.family, device, bool(random_init), int(seed))


def worker_adapter(spec: ModelSpec) -> ModelAdapter:
    """The model of ``spec``, loaded once per worker process."""
    if spec not in _ADAPTERS:
        _ADAPTERS[spec] = load_adapter(spec.path, family=spec.family, device=spec.device,
                                       random_init=spec.random_init, seed=spec.seed)
    return _ADAPTERS[spec]


def shard_cells(tokens: TokenizedCells, batch_size: int, n_shards: int) -> list[np.ndarray]:
    """Cell indices of each shard: consecutive whole batches of :meth:`TokenizedCells.batches` (in that order)."""
    batches = list(tokens.batches(batch_size))
    cuts = np.array_split(np.arange(len(batches)), min(n_shards, len(batches)))
    return [np.concatenate([batches[b] for b in cut]) for cut in cuts if cut.size]


def extract_shard(spec: ModelSpec, tokens: TokenizedCells, panel: pd.DataFrame, kept: dict, batch_size: int,
                  directory: str) -> str:
    """The task: one shard's pooled store, written to ``directory`` (complete once it exists); ``kept``: the
    ``sources``, ``n_columns`` and ``full_heads`` arguments of :func:`~analysis.interp.attention.extract_attention`."""
    final = Path(directory)
    if not (final / "done").is_file():
        partial = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}")
        store = extract_attention(worker_adapter(spec), tokens, panel, **kept, batch_size=batch_size, progress=False)
        store.save(partial)
        (partial / "done").touch()
        try:
            os.rename(partial, final)
        except OSError:   # a retried copy of this task finished first
            shutil.rmtree(partial, ignore_errors=True)
    return str(final)


def merge_shards(paths: list[str], shards: list[np.ndarray], n_cells: int, params: dict) -> AttentionStore:
    """Sum the shards' stores, one shard read at a time (memory: one store, whatever the number of shards); each
    cell's embeddings back at its row (``shards``: cell indices per shard); ``params`` join the shards' own."""
    total = AttentionStore.load(Path(paths[0]), mmap=False)
    embeddings = {kind: np.zeros((n_cells, emb.shape[1]), np.float32) for kind, emb in total.cell_embeddings.items()}
    counts = np.asarray(total.counts, dtype=np.uint64)
    for path, idx in zip(paths, shards):
        shard = total if path == paths[0] else AttentionStore.load(Path(path))
        if shard is not total:
            for name in ("head_rows", "head_cols", "layer_sums"):
                np.add(getattr(total, name), getattr(shard, name), out=getattr(total, name))
            for name, matrix in total.full_heads.items():
                matrix += shard.full_heads[name]
            counts += shard.counts
        for kind, out in embeddings.items():
            out[idx] = shard.cell_embeddings[kind]
    return AttentionStore(total.source_rows, total.head_rows, total.head_cols, total.layer_sums,
                          counts.astype(narrowest_count_dtype(n_cells)), n_cells, total.panel,
                          {**total.params, **params}, total.full_heads, embeddings)


def extract_distributed(client, spec: ModelSpec, tokens: TokenizedCells, panel: pd.DataFrame, *,
                        batch_size: int, work_dir: Path, sources: np.ndarray | None = None,
                        n_columns: int | None = None, full_heads: tuple[tuple[int, int], ...] = (),
                        n_shards: int | None = None, retries: int = 3, task: Callable = extract_shard
                        ) -> AttentionStore:
    """The pooled store of ``tokens`` extracted on ``client``'s cluster (module doc): ``n_shards`` (default four
    per worker) shards under ``work_dir``, those already there reused; ``sources``, ``n_columns`` and ``full_heads``
    as :func:`~analysis.interp.attention.extract_attention` takes them. ``task`` is the shard task (a test passes one
    that kills its worker once)."""
    n_workers = max(1, len(client.scheduler_info()["workers"]))
    shards = shard_cells(tokens, batch_size, n_shards or 4 * n_workers)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    paths = [str(work_dir / f"shard-{i:04d}-of-{len(shards):04d}") for i in range(len(shards))]
    todo = [i for i, p in enumerate(paths) if not (Path(p) / "done").is_file()]
    log.info("attention on %d worker(s): %d shards, %d to extract (%d found from an earlier attempt)", n_workers,
             len(shards), len(todo), len(shards) - len(todo))
    # the shard's cells and the panel travel inside each task (not scattered ahead): a retried task must not
    # depend on data that lived only on the worker that died
    kept = {"sources": sources, "n_columns": n_columns, "full_heads": tuple(full_heads)}
    futures = [client.submit(task, spec, tokens.subset(shards[i]), panel, kept, batch_size, paths[i],
                             retries=retries, pure=False) for i in todo]
    client.gather(futures)
    return merge_shards(paths, shards, tokens.n_cells, {"shards": len(shards), "workers": n_workers})


class BoundThreads(WorkerPlugin):
    """Worker plugin: each worker (a restarted one too) bounds its thread pools to its own thread count, so N
    workers on a machine do not each start a pool per core (:func:`analysis.threads.bound_threads`)."""

    name = "scfmx-bound-threads"

    def setup(self, worker) -> None:
        from ..threads import bound_threads

        bound_threads(worker.state.nthreads)


def connect(scheduler: str | None, workers: int | None):
    """A client of the cluster at ``scheduler``, or of a new local cluster of ``workers`` single-threaded
    processes (None when neither is set: extraction stays in this process)."""
    if not scheduler and not workers:
        return None
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise InputError(f"no Dask scheduler answers at {scheduler!r} ({exc}); start one (dask scheduler) or use "
                             "--workers N for a local cluster") from exc
    else:
        client = Client(LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                     dashboard_address=None))
    client.register_plugin(BoundThreads())
    return client
