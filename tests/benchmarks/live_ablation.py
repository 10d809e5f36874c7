"""Benchmark (not a test): one live ablation (two heads zeroed, all read-outs) on ``--cells`` real cells at
2,048 tokens with the Geneformer V1-10M shape (random weights), against one plain forward pass over the same
cells (the floor), in the same process: the first request on those cells (cold: it runs the unablated pass too and
keeps it, :mod:`analysis.interp.ablation_baseline`) and the next one (warm: it reads the kept pass), whose results
must equal the first's. Prints wall times; the last line is the warm request's ratio to the floor.

    python tests/benchmarks/live_ablation.py [--cells 100] [--device cpu|cuda] [--save results.csv]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
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
    ap.add_argument("--save", help="write the warm request's results table here (CSV)")
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
    settings = AblationConfig(n_cells=args.cells, batch_size=args.batch)
    kept = Path(tempfile.mkdtemp(prefix="live-baseline-"))
    runs = []
    for _ in ("cold", "warm"):
        t0 = time.perf_counter()
        results, _ = ablation_tables(adapter, tokens, panel, ref, np.ones((len(panel),) * 2, bool), [item],
                                     settings=settings, readout_layer=adapter.n_layers - 1, baseline_dir=kept)
        sync()
        runs.append((time.perf_counter() - t0, results))
    (cold, first), (warm, results) = runs
    numeric = results.select_dtypes("number").columns
    same = np.allclose(first[numeric].to_numpy(float), results[numeric].to_numpy(float), equal_nan=True)
    if args.save:
        results.to_csv(args.save, index=False)
    loss = results[results["readout"] == "mlm_loss"].iloc[0]
    print(f"{tokens.n_cells} cells x {int(tokens.lengths.mean())} tokens on {adapter.device}: plain forward "
          f"{floor:.1f}s; live ablation, first request (runs and keeps the unablated pass) {cold:.1f}s = "
          f"{cold / floor:.2f}x, next request {warm:.1f}s; results equal: {same}; delta loss {loss['delta']:+.4g}")
    print(f"live ablation / plain forward: {warm / floor:.2f}x")


if __name__ == "__main__":
    main()
