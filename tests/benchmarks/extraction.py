"""Benchmark (not a test): attention extraction at 2,048 tokens with the Geneformer V1-10M and V2-104M shapes
(random weights, real configs), on the same real cells, three ways in one run:

- floor: plain SDPA forward, no extraction;
- naive: eager forward with ``output_attentions=True``, then a per-cell Python loop over panel gene pairs;
- ours: :func:`analysis.interp.attention.extract_attention` (SDPA forward + hooked panel-row attention + index_add_).

Each method runs in its own fresh process (so peak RSS is its own) with the same allocator environment:
glibc defaults, or ``--allocator tuned`` (the MALLOC_* settings of DESIGN.md section 5, which mostly help eager
attention, i.e. the naive method). Prints cells/s, peak RSS and the ratios ours/floor (target <= 1.25) and
naive/ours (target >= 2). Run nothing else meanwhile: the machine has 2 cores.

    python tests/benchmarks/extraction.py [--cells 6] [--panel 200] [--allocator default|tuned]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
DICTS = {"V1-10M": "dict_gc30M", "V2-104M": "dict_gc104M"}
# glibc allocator settings that stop page-fault storms on large eager attention tensors (DESIGN.md section 5);
# applied identically to all three methods.
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def prepare(shape: str, n_cells: int, panel_size: int):
    sys.path.insert(0, str(ROOT))
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from analysis.io.cells import from_anndata
    from analysis.models.geneformer.adapter import GeneformerAdapter
    from analysis.scoring.panel import select_panel
    from analysis.io.references import load_trrust
    from analysis.models.geneformer.tokenizer import load_dictionaries, tokenize

    counts = pd.read_csv(SHARED / "scrnaseq/sc_mixology/sc_celseq2_5cl_p1.count.csv.gz", index_col=0).iloc[:, :n_cells]
    adata = ad.AnnData(X=sp.csr_matrix(counts.T.to_numpy(dtype=np.float32)), var=pd.DataFrame(index=counts.index),
                       obs=pd.DataFrame(index=counts.columns))
    cells = from_anndata(adata)
    dicts = load_dictionaries(SHARED / "geneformer" / DICTS[shape])
    tokens = tokenize(cells, dicts, 2048)
    tfs = load_trrust(SHARED / "regulatory/trrust_rawdata.human.tsv").tfs
    panel = select_panel(cells, tokens, reference_tfs=tfs, n_hvg=panel_size, panel_size=panel_size)
    return tokens, panel, GeneformerAdapter, SHARED / f"geneformer/configs/Geneformer-{shape}"


def run_method(method: str, shape: str, n_cells: int, panel_size: int, batch: int) -> dict:
    import numpy as np
    import torch

    tokens, panel, Adapter, config_dir = prepare(shape, n_cells, panel_size)
    attn = "eager" if method == "naive" else "sdpa"
    adapter = Adapter.from_pretrained(config_dir, device="cpu", random_init=True, attn_implementation=attn)
    torch.set_num_threads(os.cpu_count() or 1)
    warm = tokens.subset(np.arange(1))
    adapter.forward(warm.input_ids, warm.attention_mask)
    t0 = time.perf_counter()
    if method == "floor":
        for idx in tokens.batches(batch):
            sub = tokens.subset(idx)
            adapter.forward(sub.input_ids, sub.attention_mask)
    elif method == "ours":
        from analysis.interp.attention import extract_attention
        extract_attention(adapter, tokens, panel, batch_size=batch, progress=False)
    else:
        slot = {int(g): i for i, g in enumerate(panel["gene_index"])}
        G = len(panel)
        sums = np.zeros((adapter.n_layers, adapter.n_heads, G, G))
        for idx in tokens.batches(batch):
            sub = tokens.subset(idx)
            att = adapter.forward(sub.input_ids, sub.attention_mask, output_attentions=True).attentions
            stacked = torch.stack(att, dim=1).numpy()          # [batch, L, H, S, S]
            for b in range(len(idx)):
                pos = [(i, slot[int(g)]) for i, g in enumerate(sub.gene_index[b]) if int(g) in slot]
                for i, a in pos:
                    for j, k in pos:
                        sums[:, :, a, k] += stacked[b, :, :, i, j]
    seconds = time.perf_counter() - t0
    return {"method": method, "shape": shape, "cells": tokens.n_cells, "seconds": seconds,
            "cells_per_s": tokens.n_cells / seconds, "panel": len(panel),
            "tokens_per_cell": int(tokens.lengths.mean()),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=6)
    ap.add_argument("--panel", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--allocator", choices=("default", "tuned"), default="default")
    ap.add_argument("--shapes", nargs="+", default=["V1-10M", "V2-104M"])
    ap.add_argument("--methods", nargs="+", default=["floor", "naive", "ours"])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        method, shape = args.worker.split(":")
        print(json.dumps(run_method(method, shape, args.cells, args.panel, args.batch)))
        return
    results = []
    for shape in args.shapes:
        for method in args.methods:
            cmd = [sys.executable, __file__, "--worker", f"{method}:{shape}", "--cells", str(args.cells),
                   "--panel", str(args.panel), "--batch", str(args.batch)]
            out = subprocess.run(cmd, env={**os.environ, **(MALLOC_ENV if args.allocator == "tuned" else {})}, capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(res)
            print(f"{shape:8s} {method:6s} {res['cells_per_s']:7.3f} cells/s  {res['seconds']:7.1f}s  "
                  f"peak RSS {res['peak_rss_mib']:7.0f} MiB  ({res['cells']} cells x {res['tokens_per_cell']} "
                  f"tokens, panel {res['panel']}, {args.allocator} allocator)", flush=True)
    by = {(r["shape"], r["method"]): r for r in results}
    for shape in args.shapes:
        if all((shape, m) in by for m in ("floor", "naive", "ours")):
            floor, naive, ours = (by[(shape, m)]["seconds"] for m in ("floor", "naive", "ours"))
            print(f"{shape}: ours/floor = {ours / floor:.2f}x (target <= 1.25), naive/ours = {naive / ours:.2f}x "
                  f"(target >= 2)")


if __name__ == "__main__":
    main()
