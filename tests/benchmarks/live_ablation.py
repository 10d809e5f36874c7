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
from analysis.interp.ablation import SweepItem, ablate, prepare  # noqa: E402
from analysis.interp.interventions import InterventionSpec  # noqa: E402
from analysis.models.geneformer.adapter import GeneformerAdapter  # noqa: E402
from analysis.scoring.ranking import evaluable_universe  # noqa: E402
from analysis.io.references import load_trrust  # noqa: E402
from tests.benchmarks.extraction import SHARED, prepare as prepare_cells  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    tokens, panel, _, config_dir = prepare_cells("V1-10M", args.cells, 200)
    adapter = GeneformerAdapter.from_pretrained(config_dir, device=args.device, random_init=True)
    ref = load_trrust(SHARED / "regulatory/trrust_rawdata.human.tsv")
    universe = evaluable_universe(panel, ref, np.ones((len(panel),) * 2, bool))
    inputs = prepare(adapter, tokens, panel, universe, mask_id=1, readout_layer=adapter.n_layers - 1,
                     n_cells=args.cells)
    item = SweepItem("custom", 2, -1, (InterventionSpec("zero_head", 4, (0, 2)),))
    warm = tokens.subset(np.arange(1))
    adapter.forward(warm.input_ids, warm.attention_mask)
    sync = torch.cuda.synchronize if adapter.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for idx in tokens.batches(args.batch):
        sub = tokens.subset(idx)
        adapter.forward(sub.input_ids, sub.attention_mask)
    sync()
    floor = time.perf_counter() - t0
    t0 = time.perf_counter()
    results, _ = ablate(adapter, inputs, [item], batch_size=args.batch)
    sync()
    live = time.perf_counter() - t0
    loss = results[results["readout"] == "mlm_loss"].iloc[0]
    print(f"{tokens.n_cells} cells x {int(tokens.lengths.mean())} tokens on {adapter.device}: plain forward "
          f"{floor:.1f}s, live ablation {live:.1f}s, ratio {live / floor:.2f}x (4 forwards: baseline and "
          f"intervention, each unmasked + masked); delta loss {loss['delta']:+.4g}")


if __name__ == "__main__":
    main()
