"""Benchmark (not a test): one label-shuffle AUROC draw over a block of heads at paper scale, scored from the shuffled
positives' ranks (:func:`analysis.scoring.ranking.auroc_of_positives`) against the product with the whole shuffled
label vector that the ranking and CSSI nulls used before. Both score the same shuffles; the values must be equal.

The shape is the head ranking's at V2-316M over a 2,000-gene panel with ~390 reference TFs: ``--pairs`` candidate
pairs, ``--heads`` heads in a block (``rank_heads`` ranks 512 MiB of heads at a time), ``--positive`` share of
reference edges. The last line is the ratio new / old per draw.

    python tests/benchmarks/permutation_null.py [--pairs 775000] [--heads 20] [--positive 0.01] [--draws 20]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    from analysis.scoring.ranking import auroc_of_positives, shuffled_positives

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=775_000)
    ap.add_argument("--heads", type=int, default=20)
    ap.add_argument("--positive", type=float, default=0.01)
    ap.add_argument("--draws", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    ranks = rankdata(rng.random((args.heads, args.pairs)), axis=1)
    labels = rng.random(args.pairs) < args.positive
    shuffles = [rng.permutation(labels) for _ in range(args.draws)]

    t0 = time.perf_counter()
    old = np.stack([((ranks * y).sum(-1) - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (y.size - y.sum()))
                    for y in shuffles], axis=1)
    t_old = (time.perf_counter() - t0) / args.draws
    positives = [np.flatnonzero(y) for y in shuffles]
    t0 = time.perf_counter()
    new = np.stack([auroc_of_positives(ranks, pos, args.pairs) for pos in positives], axis=1)
    t_new = (time.perf_counter() - t0) / args.draws
    t0 = time.perf_counter()
    shuffled_positives(labels, args.draws, rng)
    t_draw = (time.perf_counter() - t0) / args.draws
    print(f"{args.heads} heads x {args.pairs} pairs, {int(labels.sum())} positives, {args.draws} draws; "
          f"max |difference| {np.abs(old - new).max():.1e}")
    print(f"per draw: whole label vector {t_old * 1e3:.1f} ms, shuffled positives {t_new * 1e3:.2f} ms "
          f"(drawing a shuffle {t_draw * 1e3:.1f} ms, once per draw for every block)")
    print(f"ratio new / old per draw: {t_new / t_old:.3f}")


if __name__ == "__main__":
    main()
