"""Benchmark (not a test): one head's scores as the Heads page's gene x gene view and ``run_network`` read them,
through :func:`analysis.scoring.edges.head_edges` (views of the store: what they read now) against
``attention_edges(store)[0]`` (what they read before: the heads plus every layer's ``[G, G]`` float64 head mean,
thrown away), on a saved attention store of a real model's shape (zero-filled, memory-mapped as a run's is). Both
must give the same scores. Prints each path's seconds and traced peak memory, and on the last line the before /
after ratio of peak memory.

    python tests/benchmarks/head_view.py [--layers 18] [--heads 18] [--genes 2000] [--sources 300]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from analysis.io import files  # noqa: E402
from analysis.io.stores import AttentionStore  # noqa: E402
from analysis.scoring.edges import attention_edges, head_edges  # noqa: E402


def saved_store(directory: Path, layers: int, heads: int, genes: int, sources: int) -> None:
    """A run's attention files at this shape: sparse zero files on disk, one row of counts and sums set."""
    shapes = {files.ATTENTION_HEAD_ROWS: ((layers, heads, sources, genes), np.float32),
              files.ATTENTION_HEAD_COLS: ((layers, heads, sources, genes), np.float32),
              files.ATTENTION_LAYER_SUMS: ((layers, genes, genes), np.float64),
              files.PAIR_COUNTS: ((genes, genes), np.uint16)}
    for name, (shape, dtype) in shapes.items():
        array = np.lib.format.open_memmap(directory / name, mode="w+", dtype=dtype, shape=shape)
        array[..., 0, :] = 1          # some co-observed pairs, so the scores are not all undefined
        array.flush()
        del array
    np.save(directory / files.ATTENTION_SOURCE_ROWS, np.arange(sources, dtype=np.int64))
    pd.DataFrame({"gene_index": np.arange(genes), "gene_id": [f"ENSG{i:011d}" for i in range(genes)],
                  "symbol": [f"G{i}" for i in range(genes)]}).to_parquet(directory / files.table("panel"))
    (directory / files.ATTENTION_PARAMS).write_text(json.dumps({"n_cells": 2000}))


def measured(read) -> tuple[float, float, np.ndarray]:
    """(seconds, traced peak MiB, one head's [sources, G] scores) of ``read(store)`` on a freshly loaded store."""
    tracemalloc.start()
    t0 = time.perf_counter()
    heads = read()
    scores = heads.head(1, 2).oriented(np.asarray(heads.rows[:8]), "tf_to_target")[0]
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    return seconds, peak, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--heads", type=int, default=18)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--sources", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        saved_store(directory, args.layers, args.heads, args.genes, args.sources)
        print(f"store: {args.layers} x {args.heads} heads, {args.genes} genes, {args.sources} sources")
        before = measured(lambda: attention_edges(AttentionStore.load(directory))[0])
        after = measured(lambda: head_edges(AttentionStore.load(directory)))
        assert np.array_equal(before[2], after[2], equal_nan=True)
        for label, (seconds, peak, _) in (("attention_edges(store)[0] (before)", before),
                                          ("head_edges(store) (after)", after)):
            print(f"{label}: {seconds:.2f} s, traced peak {peak:.1f} MiB")
        print(f"peak memory before / after: {before[1] / max(after[1], 1e-3):.0f}x "
              f"({before[1]:.1f} / {after[1]:.2f} MiB)")


if __name__ == "__main__":
    main()
