"""Benchmark (not a test): the ablation sweep with the layers before each intervention replayed from the unablated
pass (:mod:`analysis.interp.replay`) against the same sweep computing every layer (the implementation before the
replay: every forward from the embeddings), on the same real cells at a real model shape with random weights, in
one process. The sweep is the standard one (:func:`analysis.interp.ablation.sweep`, top/bottom/uniform/composite/
random k-head sets, the whole read-out layer, every MLP layer and the late MLP block) over a seeded random head
order; ``--every n`` keeps every n-th item to bound the time. Both runs' read-outs must agree. Prints per-item
seconds and, on the last line, replayed / full wall time.

    python tests/benchmarks/ablation_sweep.py [--shape V2-316M] [--cells 1] [--every 4] [--ks 5]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from analysis.interp import ablation  # noqa: E402
from analysis.interp.ablation import prepare, run_interventions, sweep  # noqa: E402
from analysis.interp.replay import first_hooked_layer  # noqa: E402
from tests.benchmarks.extraction import prepare as prepare_cells  # noqa: E402


def timed_sweep(adapter, inputs, items, batch: int) -> tuple[float, dict]:
    t0 = time.perf_counter()
    acc = run_interventions(adapter, inputs, {it.key: it.specs for it in items}, batch_size=batch)
    return time.perf_counter() - t0, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="V2-316M")
    ap.add_argument("--cells", type=int, default=1)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--ks", type=int, nargs="+", default=[5])
    args = ap.parse_args()
    adapter, tokens, panel = prepare_cells(args.shape, args.cells, 200)
    n_layers, n_heads = adapter.n_layers, adapter.n_heads
    heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    order = [heads[i] for i in np.random.default_rng(0).permutation(len(heads))]
    readout = n_layers * 3 // 4
    items = sweep(order, n_layers, readout_layer=readout, ks=args.ks, n_random=1, composite_order=order[::-1])
    items = items[::args.every]
    inputs = prepare(tokens, panel, readout_layer=readout, n_cells=args.cells)
    print(f"{args.shape}: {inputs.tokens.n_cells} cell(s) x {int(inputs.tokens.lengths.mean())} tokens, "
          f"{len(items)} sweep items (first layers {[first_hooked_layer(it.specs, n_layers) for it in items]}), "
          f"read-out layer {readout}")
    timed_sweep(adapter, inputs, [], args.cells)                  # warm-up: the first forwards pay for allocation
    with mock.patch.object(ablation, "first_hooked_layer", lambda specs, n: 0):   # every forward from layer 0
        full, slow = timed_sweep(adapter, inputs, items, args.cells)
    replayed, fast = timed_sweep(adapter, inputs, items, args.cells)
    for key in slow:
        for name in ("loss", "accuracy", "hidden_cos", "output_cos", "sums"):
            a, b = getattr(fast[key], name), getattr(slow[key], name)
            assert np.allclose(a, b, rtol=1e-4, atol=1e-6, equal_nan=True), (key, name)
    forwards = 2 + 2 * sum(1 - first_hooked_layer(it.specs, n_layers) / n_layers for it in items)
    print(f"full: {full:.1f} s ({full / (len(items) + 1):.1f} s per item and baseline); replayed: {replayed:.1f} s "
          f"({replayed / (len(items) + 1):.1f} s per item); layer-count model {forwards:.1f} of "
          f"{2 * (len(items) + 1)} forwards = {forwards / (2 * (len(items) + 1)):.2f}; read-outs equal")
    print(f"replayed / full sweep wall time: {replayed / full:.2f}x")


if __name__ == "__main__":
    main()
