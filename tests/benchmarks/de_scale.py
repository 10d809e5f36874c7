"""Benchmark (not a test): vectorised differential expression at Perturb-seq scale on this machine.

Synthetic raw counts (negative binomial) for ``--cells`` cells x ``--genes`` genes split into ``--perts``
perturbation groups plus controls; times :func:`analysis.scoring.perturbation.differential_expression` (Welch, all
perturbations x all genes) against a per-perturbation scipy ``ttest_ind`` loop on the same matrix (the
baseline), and checks they agree.

    python tests/benchmarks/de_scale.py [--cells 60000] [--genes 2000] [--perts 1000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from analysis.io.cells import from_anndata  # noqa: E402
from analysis.scoring.edges import expression_matrix  # noqa: E402
from analysis.scoring.perturbation import differential_expression  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=60_000)
    ap.add_argument("--genes", type=int, default=2_000)
    ap.add_argument("--perts", type=int, default=1_000)
    ap.add_argument("--baseline-perts", type=int, default=50, help="perturbations timed in the scipy loop")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    mu = rng.lognormal(0, 1, args.genes)
    counts = rng.poisson(rng.gamma(2.0, mu / 2.0, (args.cells, args.genes))).astype(np.float32)
    symbols = [f"G{i}" for i in range(args.genes)]
    labels = np.where(rng.random(args.cells) < 0.2, "control",
                      np.array(symbols)[rng.integers(0, args.perts, args.cells)])
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=pd.DataFrame({"pert": labels}),
                       var=pd.DataFrame({"ensembl_id": symbols}, index=symbols))
    cells = from_anndata(adata, perturbation_col="pert")
    universe = pd.DataFrame({"gene_id": symbols, "symbol": symbols})
    t0 = time.perf_counter()
    de = differential_expression(cells, universe, min_cells=2)
    ours = time.perf_counter() - t0
    n = len(de.groups)
    x = expression_matrix(cells, np.array(symbols))
    ctrl = x[labels == "control"]
    t0 = time.perf_counter()
    for pert in de.groups["perturbation"][: args.baseline_perts]:
        expected = stats.ttest_ind(x[labels == pert], ctrl, equal_var=False).pvalue
    loop = (time.perf_counter() - t0) / args.baseline_perts * n
    got = de.table[de.table["perturbation"] == pert]["p"].to_numpy()
    agree = np.allclose(got, np.where(np.isfinite(expected), expected, 1.0), rtol=1e-6)
    print(f"{args.cells} cells x {args.genes} genes, {n} perturbations: vectorised Welch {ours:.1f}s; "
          f"scipy loop (extrapolated from {args.baseline_perts}) {loop:.1f}s; speed-up {loop / ours:.1f}x; "
          f"p-values agree: {agree}")


if __name__ == "__main__":
    main()
