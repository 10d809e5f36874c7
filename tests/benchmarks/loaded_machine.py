"""Benchmark (not a test): the perturbation / confound stages' scikit-learn HistGradientBoosting fits on a busy
machine, as precompute runs them against how they run unbounded.

Each measurement is a fresh interpreter fitting the same model ``--fits`` times on the same data:

- unloaded: nothing else running, precompute's thread bounds (:func:`analysis.threads.bound_threads` and the
  stages' one OpenMP thread);
- loaded, unbounded: ``--load`` busy processes beside it, library defaults (an OpenMP thread per core, spinning
  at barriers);
- loaded, as precompute: the same load, precompute's bounds.

The last line is the loaded/unloaded ratio as precompute runs it (1.0 = the load costs nothing; with more busy
processes than spare cores the fair share of a core already costs some).

    python tests/benchmarks/loaded_machine.py [--load 2] [--fits 5]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FIT = """
import sys, time
sys.path.insert(0, {root!r})
if {bounded}:
    from analysis.threads import bound_threads
    bound_threads()
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits
rng = np.random.default_rng(0)
x = rng.normal(size=(20000, 12))
y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(size=20000) > 0).astype(int)
_limit = threadpool_limits(1, user_api="openmp") if {bounded} else None  # kept: held for the fits
t0 = time.perf_counter()
for _ in range({fits}):
    HistGradientBoostingClassifier(max_iter=100, max_leaf_nodes=15, random_state=0).fit(x, y)
print(time.perf_counter() - t0)
"""


def busy() -> None:
    while True:
        pass


def measure(bounded: bool, fits: int, load: int) -> float:
    workers = [multiprocessing.Process(target=busy, daemon=True) for _ in range(load)]
    for w in workers:
        w.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS") and k != "OMP_WAIT_POLICY"}
        out = subprocess.run([sys.executable, "-c", FIT.format(root=str(ROOT), bounded=bounded, fits=fits)],
                             env=env, capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        for w in workers:
            w.terminate()
            w.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", type=int, default=2, help="busy processes beside the fits")
    ap.add_argument("--fits", type=int, default=5)
    args = ap.parse_args()
    unloaded = measure(True, args.fits, 0)
    unbounded = measure(False, args.fits, args.load)
    bounded = measure(True, args.fits, args.load)
    print(f"{args.fits} HistGradientBoosting fits (20,000 x 12), {os.cpu_count()} cores: unloaded {unloaded:.1f}s; "
          f"with {args.load} busy processes: unbounded {unbounded:.1f}s, as precompute {bounded:.1f}s")
    print(f"loaded / unloaded as precompute runs it: {bounded / unloaded:.2f}x (unbounded: {unbounded / unloaded:.2f}x)")


if __name__ == "__main__":
    main()
