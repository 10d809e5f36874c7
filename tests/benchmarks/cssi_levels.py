"""Benchmark (not a test): the cost of scoring one CSSI level ("scoring a level must cost a small
fraction of the extraction pass, whatever the run"), on a synthetic run of a chosen size written in the real file
formats and read back as the app and precompute read a run (memory-mapped group sums).

The run: ``--cells`` cells in ``--states`` Gaussian cell states (the representation the strata are built on),
``--panel`` genes of which ``--tfs`` are reference TFs with ``--targets`` targets each, ``--layers`` x ``--heads``
attention sums per group of cells (each head whole, or with ``--rows tfs`` at the TFs' rows as paper-scale runs keep
them; each layer's head mean over every pair) (``cssi.n_fine`` fine clusters + ``cssi.n_random_groups`` random groups), random
counts and expression. ``score_level`` (the grid's and the app's slider's scoring) then runs on one level with the
run's nulls (``--n-null`` random strata and label shuffles, ``--n-gene-null`` gene-permuted references), here and,
with ``--baseline REV``, in a fresh process on the code of git revision REV (a worktree under /tmp) over the same
files; the two curve tables must be equal. ``--profile`` prints where the time goes.

``--run cache/artifacts/<run id>`` scores a level of a real run instead (its CSSI files, panel and first reference)
and prints its own attention-extraction stage time from the manifest next to it.

Prints each side's time and peak memory; the last line is the ratio this code / baseline.

    python tests/benchmarks/cssi_levels.py [--cells 10000 --panel 2000 --tfs 150 --layers 1 --heads 4 | --run DIR]
        [--rows all|tfs] [--level 5] [--baseline REV] [--profile] [--keep DIR]
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def build_run(directory: Path, args) -> None:
    """Write a synthetic CSSI run (module doc) into ``directory`` with :func:`analysis.scoring.cssi_levels.save`,
    plus its panel and reference edges."""
    from analysis.config import CSSIConfig
    from analysis.scoring.cssi_levels import CSSIRun, build_strata
    from analysis.io.stores import GroupedAttention
    from analysis.scoring.cssi import CSSISource
    from analysis.scoring import cssi_levels

    rng = np.random.default_rng(0)
    cfg = CSSIConfig(n_strata=(args.level,), primary_n_strata=args.level, min_size=10)
    centres = rng.normal(size=(args.states, 20)) * 4
    rep = centres[rng.integers(args.states, size=args.cells)] + rng.normal(size=(args.cells, 20))
    strata, random_group = build_strata(cfg, rep, args.cells)
    n_groups = strata.n_fine + cfg.n_random_groups
    g = args.panel
    symbols = np.array([f"G{i}" for i in range(g)])
    tfs = np.sort(rng.choice(g, size=args.tfs, replace=False))
    rows = np.arange(g) if args.rows == "all" else tfs
    heads = np.lib.format.open_memmap(directory / "heads.tmp.npy", mode="w+", dtype=np.float32,
                                      shape=(n_groups, args.layers, args.heads, rows.size, g))
    layer_sums = np.empty((n_groups, args.layers, g, g), dtype=np.float32)
    counts = np.empty((n_groups, g, g), dtype=np.uint8)
    for i in range(n_groups):
        counts[i] = rng.integers(0, 40, size=(g, g), dtype=np.uint8)
        for layer in range(args.layers):
            layer_sums[i, layer] = rng.random((g, g), dtype=np.float32) * counts[i]
            heads[i, layer] = rng.random((args.heads, rows.size, g), dtype=np.float32) * counts[i][rows]
    expression = np.log1p(rng.poisson(0.6, size=(args.cells, g)).astype(np.float32))
    cells = pd.DataFrame({"cell": np.arange(args.cells), "obs_name": [f"c{i}" for i in range(args.cells)],
                          "fine_cluster": strata.fine, "random_group": random_group, "x": strata.layout[:, 0],
                          "y": strata.layout[:, 1], "cell_state": ""})
    panel = pd.DataFrame({"symbol": symbols, "gene_id": [f"ENSG{i:011d}" for i in range(g)]})
    grouped = GroupedAttention(rows, heads, None, layer_sums, counts, tuple(range(args.layers)), panel)
    source = CSSISource(grouped, expression, strata.fine, random_group)
    cssi_levels.save(CSSIRun(strata, source, cells, {"layers": list(range(args.layers)), "strata": strata.params,
                                                     "representation": "synthetic"}), directory)
    del heads, grouped, source
    (directory / "heads.tmp.npy").unlink()
    print(f"{strata.n_fine} fine clusters + {cfg.n_random_groups} random groups")
    panel.to_parquet(directory / "panel.parquet")
    edges = [(symbols[t], symbols[x]) for t in tfs for x in rng.choice(g, size=args.targets, replace=False) if x != t]
    pd.DataFrame(edges, columns=["tf", "target"]).assign(mode="Unknown").to_parquet(directory / "edges.parquet")


def score(directory: Path, level: int, n_null: int, n_gene_null: int, profile: bool, out: Path) -> dict:
    """Score ``level`` of the run in ``directory`` (a real run's, or :func:`build_run`'s) with the code on
    ``sys.path``; time, peak RSS, the curve's path under ``out``."""
    from analysis.io.references import ReferenceNetwork
    from analysis.scoring.cssi_levels import load_cssi, score_level

    run = load_cssi(directory)
    panel = pd.read_parquet(directory / "panel.parquet")
    if (directory / "edges.parquet").is_file():
        ref = ReferenceNetwork("synthetic", pd.read_parquet(directory / "edges.parquet"), {})
    else:
        edges = pd.read_parquet(directory / "reference_edges.parquet")
        name = edges["reference"].iloc[0]
        ref = ReferenceNetwork(name, edges[edges["reference"] == name], {})
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    curve, _null = score_level(run, panel, ref, level, direction="tf_to_target", n_null=n_null,
                               n_gene_null=n_gene_null, seed=0)
    if profiler:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    seconds = time.perf_counter() - start
    path = out / f"curve-{time.time_ns()}.parquet"
    curve.to_parquet(path)
    return {"seconds": seconds, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "curve": str(path), "pairs": int(len(curve))}


def baseline(rev: str, directory: Path, out: Path, args) -> dict:
    """:func:`score` on the code of git revision ``rev``, in a fresh process."""
    tree = Path(tempfile.mkdtemp(prefix="cssi-baseline-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        code = (f"import sys, json, importlib.util; from pathlib import Path; sys.path.insert(0, {str(tree)!r}); "
                f"spec = importlib.util.spec_from_file_location('bench', {__file__!r}); "
                f"bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench); "
                f"print(json.dumps(bench.score(Path({str(directory)!r}), {args.level}, {args.n_null}, "
                f"{args.n_gene_null}, False, Path({str(out)!r}))))")
        done = subprocess.run([sys.executable, "-c", code], cwd=tree, check=True, capture_output=True, text=True)
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--states", type=int, default=8)
    ap.add_argument("--panel", type=int, default=2_000)
    ap.add_argument("--tfs", type=int, default=150)
    ap.add_argument("--targets", type=int, default=20)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--rows", choices=("all", "tfs"), default="all",
                    help="per-head rows kept per group: every gene, or the reference TFs' (the paper-scale layout)")
    ap.add_argument("--level", type=int, default=5)
    ap.add_argument("--n-null", type=int, default=100)
    ap.add_argument("--n-gene-null", type=int, default=30)
    ap.add_argument("--baseline", help="git revision to compare with (e.g. HEAD~3)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--run", type=Path, help="a real run directory (cache/artifacts/<run id>) instead of a synthetic one")
    ap.add_argument("--keep", type=Path, help="write the synthetic run here and keep it (score it again with --run "
                                              "in a fresh process, so the peak is the scoring's alone)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="cssi-levels-") as tmp:
        out = Path(tmp)
        if args.run:
            directory = args.run.resolve()
            if (directory / "manifest.json").is_file():
                manifest = json.loads((directory / "manifest.json").read_text())
                seconds = {t["stage"]: t["seconds"] for t in manifest["stage_timings"]}
                print(f"run {directory.name}: its attention extraction stage took {seconds.get('attention')} s")
        else:
            directory = args.keep or out
            directory.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            build_run(directory, args)
            size = sum(p.stat().st_size for p in directory.iterdir()) / 2 ** 30
            print(f"synthetic run: {args.cells} cells, {args.panel} genes, {args.tfs} TFs, {args.layers} layer(s) x "
                  f"{args.heads} heads, {size:.2f} GiB on disk, written in {time.perf_counter() - start:.0f} s")
        base = baseline(args.baseline, directory, out, args) if args.baseline else None
        ours = score(directory, args.level, args.n_null, args.n_gene_null, args.profile, out)
        print(f"this code: one level ({args.n_null} random strata, {args.n_gene_null} gene permutations) "
              f"{ours['seconds']:.1f} s, peak RSS {ours['peak_gib']:.2f} GiB")
        if base is None:
            return
        print(f"baseline {args.baseline}: {base['seconds']:.1f} s, peak RSS {base['peak_gib']:.2f} GiB")
        a, b = pd.read_parquet(base["curve"]), pd.read_parquet(ours["curve"])
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, atol=1e-12)
        print(f"curve tables equal ({len(b)} rows)")
        print(f"one CSSI level: baseline {base['seconds']:.1f} s, this code {ours['seconds']:.1f} s: "
              f"ratio {ours['seconds'] / base['seconds']:.3f}")


if __name__ == "__main__":
    main()
