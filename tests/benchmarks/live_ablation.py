"""Benchmark (not a test): one live ablation (two heads zeroed, all read-outs) on ``--cells`` real cells at
2,048 tokens with the Geneformer V1-10M shape (random weights), against one plain forward pass over the same
cells (the floor), in the same process. Prints wall times and the ratio.

    python tests/benchmarks/live_ablation.py [--cells 100] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from analysis.config import AblationConfig  # noqa: E402
from analysis.interp.ablation import SweepItem  # noqa: E402
from analysis.interp.interventions import InterventionSpec  # noqa: E402
from analysis.io.references import load_trrust  # noqa: E402
from analysis.rerun import ablation_tables  # noqa: E402
from tests.benchmarks.extraction import SHARED, prepare as prepare_cells  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    adapter, tokens, panel = prepare_cells("V1-10M", args.cells, 200, device=args.device)
    ref = load_trrust(SHARED / "regulatory/trrust_rawdata.human.tsv")
    item = SweepItem("custom", 2, -1, (InterventionSpec("zero_head", 4, (0, 2)),))
    adapter.forward(tokens.subset(np.arange(1)))
    sync = torch.cuda.synchronize if adapter.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for idx in tokens.batches(args.batch):
        adapter.forward(tokens.subset(idx))
    sync()
    floor = time.perf_counter() - t0
    t0 = time.perf_counter()
    results, _ = ablation_tables(adapter, tokens, panel, ref, np.ones((len(panel),) * 2, bool), [item],
                                 settings=AblationConfig(n_cells=args.cells, batch_size=args.batch),
                                 readout_layer=adapter.n_layers - 1)
    sync()
    live = time.perf_counter() - t0
    loss = results[results["readout"] == "mlm_loss"].iloc[0]
    print(f"{tokens.n_cells} cells x {int(tokens.lengths.mean())} tokens on {adapter.device}: plain forward "
          f"{floor:.1f}s, live ablation {live:.1f}s, ratio {live / floor:.2f}x (4 forwards: baseline and "
          f"intervention, each unmasked + masked); delta loss {loss['delta']:+.4g}")


if __name__ == "__main__":
    main()
