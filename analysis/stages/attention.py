"""The attention stage: streaming extraction into the pooled :class:`~analysis.io.stores.AttentionStore` (resumable:
a finished extraction is reloaded, not redone), then the edge scores every later stage reads: per-head and
layer-mean attention, and the Spearman-correlation baseline over the same panel and the same cells (``extraction.cells``;
control cells by default, as the paper; sections 2.1, 2.3)."""
from __future__ import annotations

import shutil
import time

import numpy as np

from ..config import stable_hash
from ..interp.attention import extract_attention
from ..io import files
from ..io.artifacts import RunWriter
from ..io.stores import AttentionStore
from ..scoring.edges import EdgeScores, HeadEdges, attention_edges, spearman_edges
from .inputs import Inputs
from .timing import timed


def run(inp: Inputs, writer: RunWriter, run_key: str, progress: bool, client=None) -> tuple[AttentionStore, str]:
    """The pooled store (extracted, or reloaded when a killed run already finished it) and the stage key; with a
    Dask ``client``, extracted in shards on its cluster (:mod:`.distributed`; a resumed run keeps finished shards)."""
    key = stable_hash({"run": run_key, "stage": "attention"})
    t0 = time.perf_counter()
    if writer.is_done("attention", key):
        store = AttentionStore.load(writer.dir)
        writer.mark_done("attention", key, time.perf_counter() - t0, skipped=True)
        return store, key
    tokens = inp.attention_tokens
    with timed(f"attention ({tokens.n_cells} {inp.cfg.extraction.cells} cells, {len(inp.panel)} panel genes, "
               f"{inp.adapter.device})"):
        if client is None:
            store = extract_attention(inp.adapter, tokens, inp.panel, sources=inp.source_rows,
                                      n_columns=inp.n_columns, full_heads=inp.full_heads,
                                      batch_size=inp.cfg.extraction.batch_size, progress=progress)
        else:
            from .distributed import ModelSpec, extract_distributed

            m = inp.cfg.model
            spec = ModelSpec.of(inp.adapter, inp.model_dir, m.device, m.random_init, m.seed)
            store = extract_distributed(client, spec, tokens, inp.panel, sources=inp.source_rows,
                                        n_columns=inp.n_columns, full_heads=inp.full_heads,
                                        batch_size=inp.cfg.extraction.batch_size, work_dir=writer.dir / "attention_shards")
            store.params["model"] = inp.adapter.name
        store.save(writer.dir)
        shutil.rmtree(writer.dir / "attention_shards", ignore_errors=True)
    del store            # the in-memory sums go before the stage is closed, so the next stage's peak is its own
    writer.mark_done("attention", key, time.perf_counter() - t0)
    return AttentionStore.load(writer.dir), key   # memory-mapped: later stages read the rows they need


def edges(inp: Inputs, store: AttentionStore, writer: RunWriter, key: str
          ) -> tuple[HeadEdges, EdgeScores, EdgeScores]:
    """(per-head attention at the source genes, each layer's head mean, Spearman edges over the same cells); the
    Spearman edges written as a float32 array (the app reads attention from the store itself)."""
    t0 = time.perf_counter()
    with timed("edges"):
        heads, layer_means = attention_edges(store)
        corr_edges = spearman_edges(inp.attention_cell_data, store.panel)
        np.save(writer.dir / files.EDGES_SPEARMAN, corr_edges.scores.astype(np.float32))
    writer.mark_done("edges", key, time.perf_counter() - t0)
    return heads, layer_means, corr_edges
