"""Benchmark (not a test): the paper's protocols at the paper's model shapes, end to end through ``precompute.py``.

The models are the real configurations from ``../shared/data`` with random weights (nothing is downloaded):
Geneformer V2-316M (18 layers x 18 heads, d 1,152, 4,096 tokens; the gc104M dictionaries) and scGPT whole-human
(12 x 8, d 512; its ``args.json`` and ``vocab.json``). The screen is generated outside the repository
(``--workdir``, once: a second invocation reuses it, and precompute resumes a run from its finished stages):
``--genes`` real human genes present in both models' vocabularies (reference TFs of TRRUST with
the most targets first), ``--controls`` non-targeting control cells and ``--per-tf`` cells for each of ``--tfs``
knocked-down TFs (own gene to 15%, its TRRUST targets 2-fold down), Poisson counts dense enough that a cell's input
fills Geneformer's 4,096 tokens. Memory does not grow with cells (the stores are fixed-size), so few cells are run
and the time per cell is reported.

For each family and protocol (``paper-k562``: 2,000-gene HVG universe; ``paper-rpe1``: HVGs plus perturbed genes,
3,309-gene universe, so its screen knocks down ``--rpe1-perturbed`` further genes), it prints per stage the peak
resident memory measured inside the run (manifest ``stage_timings``) next to the plan's estimate (manifest ``plan``),
and the wall time next to the plan's time (each with its ratio, measured / planned); the last line is the worst
peak as a fraction of 24 GiB.

    python tests/benchmarks/paper_scale.py [--families geneformer,scgpt] [--protocols paper-k562,paper-rpe1]
        [--controls 4] [--tfs 12] [--per-tf 4] [--set KEY=VALUE ...]

``--set`` passes settings through to every run (e.g. ``ablation.n_cells=0`` to leave the sweep out: on 2 CPU cores
a V2-316M forward of one 4,096-token cell takes tens of seconds, and the sweep is two forwards per item and cell).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
GIB = 2 ** 30


def human_genes(n_genes: int, n_tfs: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(``n_genes`` genes with Ensembl id and symbol, in the gc104M dictionary and the scGPT vocabulary, the
    ``n_tfs`` TRRUST TFs with the most targets among them first; the TRRUST pairs among those genes)."""
    names = pickle.loads((SHARED / "geneformer/dict_gc104M/gene_name_id_dict_gc104M.pkl").read_bytes())
    tokens = pickle.loads((SHARED / "geneformer/dict_gc104M/token_dictionary_gc104M.pkl").read_bytes())
    vocab = json.loads((SHARED / "scgpt/vocab_whole_human_60697.json").read_text())
    both = {s: e for s, e in names.items() if e in tokens and s in vocab}
    trrust = pd.read_csv(SHARED / "regulatory/trrust_rawdata.human.tsv", sep="\t", header=None,
                         names=["tf", "target", "mode", "pmid"])
    trrust = trrust[trrust["tf"].isin(both) & trrust["target"].isin(both)]
    tfs = trrust.groupby("tf").size().sort_values(ascending=False).index[:n_tfs].tolist()
    targets = trrust[trrust["tf"].isin(tfs)]["target"].unique().tolist()
    chosen = list(dict.fromkeys(tfs + targets + sorted(set(trrust["tf"]) | set(trrust["target"]))))
    rest = [s for s in sorted(both) if s not in set(chosen)]
    symbols = (chosen + rest)[:n_genes]
    genes = pd.DataFrame({"gene_id": [both[s] for s in symbols], "symbol": symbols})
    return genes, trrust[trrust["tf"].isin(symbols) & trrust["target"].isin(symbols)]


def make_screen(path: Path, genes: pd.DataFrame, trrust: pd.DataFrame, tfs: list[str], controls: int, per_tf: int,
                others: list[str] = (), seed: int = 0) -> None:
    """A CRISPRi screen as a real .h5ad (module doc): obs ``gene`` (``non-targeting`` for controls), raw counts;
    ``others``: further knocked-down genes (own gene only), ``per_tf`` cells each."""
    rng = np.random.default_rng(seed)
    g = len(genes)
    index = {s: i for i, s in enumerate(genes["symbol"])}
    mean = rng.lognormal(0.3, 1.0, g)
    labels = ["non-targeting"] * controls + [gene for gene in [*tfs, *others] for _ in range(per_tf)]
    rows = []
    for label in labels:
        m = mean * rng.lognormal(0, 0.2)
        if label != "non-targeting":
            m = m.copy()
            m[index[label]] *= 0.15
            m[[index[t] for t in trrust.loc[trrust["tf"] == label, "target"] if t in index]] *= 0.5
        rows.append(sp.csr_matrix(rng.poisson(m).astype(np.float32)))
    adata = ad.AnnData(sp.vstack(rows).tocsr(), obs=pd.DataFrame({"gene": labels},
                                                                  index=[f"cell{i}" for i in range(len(labels))]),
                       var=pd.DataFrame({"gene_symbols": genes["symbol"].to_numpy()}, index=genes["gene_id"].to_numpy()))
    adata.write_h5ad(path)


def model_args(family: str, workdir: Path) -> list[str]:
    """The precompute arguments of one family's real configuration with random weights."""
    if family == "geneformer":
        return ["--model", str(SHARED / "geneformer/configs/Geneformer-V2-316M"), "--random-weights",
                "--dictionaries", str(SHARED / "geneformer/dict_gc104M")]
    directory = workdir / "scgpt_whole_human"
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in (("args.json", "args_whole_human.json"), ("vocab.json", "vocab_whole_human_60697.json")):
        if not (directory / name).exists():
            (directory / name).symlink_to(SHARED / "scgpt" / source)
    # a 1,200-token input cannot hold the paper's 2,000-3,500-gene universes as <cls> + panel: each cell's
    # expressed genes, sampled to the model's length (pretraining's input), as precompute's error says
    return ["--model", str(directory), "--random-weights", "--model-family", "scgpt", "--set",
            "tokenizer.mode=zero_shot"]


def run(family: str, protocol: str, data: Path, reference: Path, workdir: Path, extra: list[str]) -> dict:
    """One precompute run in a fresh process; its manifest's stage timings and plan."""
    cache = workdir / f"cache-{family}-{protocol}"
    cmd = [sys.executable, str(ROOT / "precompute.py"), "--quiet", "--cache", str(cache), "--protocol", protocol,
           *model_args(family, workdir), "--data", str(data), "--reference", f"trrust:{reference}",
           "--perturbation-col", "gene", "--control-label", "non-targeting", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0
    peak = next((int(line.split(":")[1]) * 1024 for line in done.stderr.splitlines()
                 if "Maximum resident set size" in line), 0)
    if done.returncode != 0:
        print(done.stderr[-4000:])
        return {"family": family, "protocol": protocol, "failed": True, "wall": wall, "peak": peak}
    (run_dir,) = [p for p in (cache / "artifacts").iterdir() if (p / "manifest.json").is_file()]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    plan_lines = [line for line in done.stderr.splitlines() if line.startswith("  ")]
    return {"family": family, "protocol": protocol, "failed": False, "wall": wall, "peak": peak,
            "timings": manifest["stage_timings"], "plan": manifest["plan"], "plan_text": plan_lines,
            "cells": manifest["data"]["attention_cells"], "panel": manifest["data"]["panel_size"]}


def report(result: dict) -> float:
    """Print one run's stages (measured peak, plan, ratio, seconds); returns its worst peak in bytes."""
    head = f"{result['family']} {result['protocol']}"
    if result["failed"]:
        print(f"{head}: FAILED after {result['wall']:.0f} s, peak {result['peak'] / GIB:.2f} GiB")
        return result["peak"]
    plan = {row["stage"]: row for row in result["plan"]["stages"]}
    print(f"\n{head}: {result['cells']} attention cells, {result['panel']} panel genes; wall {result['wall']:.0f} s, "
          f"process peak {result['peak'] / GIB:.2f} GiB")
    print(f"  {'stage':<14} {'peak GiB':>9} {'plan GiB':>9} {'ratio':>6} {'seconds':>9} {'plan s':>8} {'ratio':>6}")
    for row in result["timings"]:
        est = plan.get(row["stage"])
        measured = row.get("peak_rss_gib")
        planned = est["memory"] / GIB if est else None
        ratio = f"{measured / planned:6.2f}" if measured and planned else "     -"
        timed = est is not None and est["seconds"] is not None
        plan_s = f"{est['seconds']:8.0f}" if timed else "       -"
        time_ratio = ("  part" if timed and est.get("partial") else                 # the plan timed part of it
                      f"{row['seconds'] / est['seconds']:6.2f}" if timed and est["seconds"] > 0 else "     -")
        print(f"  {row['stage']:<14} {measured or float('nan'):9.2f} {planned or float('nan'):9.2f} {ratio} "
              f"{row['seconds']:9.1f} {plan_s} {time_ratio}")
    cal = result["plan"]["calibration"]
    print(f"  calibration: {cal['length']}-token cells {cal['seconds']:.1f} s per cell (a plain forward "
          f"{cal.get('forward_seconds', 0):.1f} s); attention "
          f"{next(r['seconds'] for r in result['timings'] if r['stage'] == 'attention') / result['cells']:.1f} s/cell")
    return result["peak"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/paper_scale")
    ap.add_argument("--families", default="geneformer,scgpt")
    ap.add_argument("--protocols", default="paper-k562,paper-rpe1")
    ap.add_argument("--genes", type=int, default=4000)
    ap.add_argument("--controls", type=int, default=4)
    ap.add_argument("--tfs", type=int, default=12)
    ap.add_argument("--per-tf", type=int, default=4)
    ap.add_argument("--rpe1-perturbed", type=int, default=1400,
                    help="further knocked-down genes in paper-rpe1's screen, forced into its universe as the "
                         "RPE1 screen's perturbed genes are (about 2,000 HVGs + these = its 3,309 genes)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    genes, trrust = human_genes(args.genes, args.tfs)
    tfs = trrust.groupby("tf").size().sort_values(ascending=False).index[:args.tfs].tolist()
    reference = workdir / "trrust.tsv"
    trrust.to_csv(reference, sep="\t", header=False, index=False)
    others = [s for s in genes["symbol"][::-1] if s not in set(tfs)][:args.rpe1_perturbed]
    screens = {"paper-k562": (workdir / "screen.h5ad", []), "paper-rpe1": (workdir / "screen-rpe1.h5ad", others)}
    for protocol in args.protocols.split(","):
        path, extra_genes = screens[protocol]
        if not path.is_file():      # kept across invocations, so a run resumes from its finished stages
            make_screen(path, genes, trrust, tfs, args.controls, args.per_tf, extra_genes)
        print(f"{protocol} screen: {args.controls} controls + ({len(tfs)} TFs + {len(extra_genes)} other genes) x "
              f"{args.per_tf} cells over {len(genes)} real genes; {len(trrust)} TRRUST pairs among them")
    extra = [x for item in args.set for x in ("--set", item)]
    worst = 0
    for family in args.families.split(","):
        for protocol in args.protocols.split(","):
            worst = max(worst, report(run(family, protocol, screens[protocol][0], reference, workdir, extra)))
    print(f"\nworst peak resident memory {worst / GIB:.2f} GiB = {worst / (24 * GIB):.2f} of 24 GiB")


if __name__ == "__main__":
    main()
