"""Benchmark (not a test): attention extraction on the same real cells at each model's input size, with the Geneformer
V1-10M (2,048 tokens) and V2-104M (4,096) shapes (real configs and dictionaries) and the scGPT whole-human shape
(1,200 tokens; real args.json and vocab.json, zero-shot input: the cell's expressed genes sampled to 1,199, Ensembl
ids mapped through gc104M's symbol table), all with random weights, three ways in one run:

- floor: plain SDPA forward, no extraction;
- naive: the model's explicit attention weights (Geneformer: eager ``output_attentions``; scGPT: the native model's
  explicit-softmax path), then a per-cell Python loop over panel gene pairs;
- ours: :func:`analysis.interp.attention.extract_attention` (SDPA forward + hooked panel-row attention + index_add_).

Each method runs in its own fresh process (so peak RSS is its own) with the same allocator environment:
glibc defaults, or ``--allocator tuned`` (the MALLOC_* settings of DESIGN.md section 5, which mostly help eager
attention, i.e. the naive method). Prints cells/s, peak RSS and the ratios ours/floor (target <= 1.25) and
naive/ours (target >= 2). Run nothing else meanwhile: the machine has 2 cores.

    python tests/benchmarks/extraction.py [--cells 6] [--panel 200] [--allocator default|tuned]
        [--shapes V1-10M V2-104M scGPT-human]
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
DICTS = {"V1-10M": "dict_gc30M", "V2-104M": "dict_gc104M", "V2-316M": "dict_gc104M", "scGPT-human": "dict_gc104M"}
# glibc allocator settings that stop page-fault storms on large eager attention tensors (DESIGN.md section 5);
# applied identically to all three methods.
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def model_dir(shape: str, scratch: Path) -> Path:
    """A checkpoint directory with the shape's real architecture files (scGPT's two JSON files go to ``scratch``)."""
    if not shape.startswith("scGPT"):
        return SHARED / f"geneformer/configs/Geneformer-{shape}"
    import shutil

    scratch.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHARED / "scgpt/args_whole_human.json", scratch / "args.json")
    shutil.copy(SHARED / "scgpt/vocab_whole_human_60697.json", scratch / "vocab.json")
    return scratch


def prepare(shape: str, n_cells: int, panel_size: int, attn: str = "sdpa", device: str = "cpu"):
    """(adapter, tokens, panel) of the first ``n_cells`` real cells for one model shape (random weights)."""
    import tempfile

    sys.path.insert(0, str(ROOT))
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from analysis.config import TokenizerConfig
    from analysis.io.cells import from_anndata
    from analysis.io.references import load_trrust
    from analysis.models.base import load_adapter
    from analysis.scoring.panel import select_panel

    counts = pd.read_csv(SHARED / "scrnaseq/sc_mixology/sc_celseq2_5cl_p1.count.csv.gz", index_col=0).iloc[:, :n_cells]
    adata = ad.AnnData(X=sp.csr_matrix(counts.T.to_numpy(dtype=np.float32)), var=pd.DataFrame(index=counts.index),
                       obs=pd.DataFrame(index=counts.columns))
    adapter = load_adapter(model_dir(shape, Path(tempfile.mkdtemp())), random_init=True, device=device)
    adapter.model.set_attn_implementation(attn)
    tokenizer = adapter.tokenizer(TokenizerConfig(mode="zero_shot"), SHARED / "geneformer" / DICTS[shape])
    cells = from_anndata(adata, symbol_to_id=tokenizer.symbol_to_id, require_ensembl=tokenizer.requires_ensembl)
    tokens = tokenizer.tokenize(cells)
    tfs = load_trrust(SHARED / "regulatory/trrust_rawdata.human.tsv").tfs
    panel = select_panel(cells, tokens.genes, tokens.gene_presence(), reference_tfs=tfs, n_hvg=panel_size,
                         panel_size=panel_size)
    return adapter, tokens, panel


def explicit_attentions(adapter, batch):
    """``[batch, L, H, S, S]`` explicit attention weights of one batch (the model in its eager mode)."""
    import torch

    if adapter.family == "geneformer":
        return torch.stack(adapter.forward(batch, output_attentions=True).attentions, dim=1)
    layers = [lay.self_attn for lay in adapter.model.transformer_encoder.layers]
    for attn in layers:
        attn.keep_weights = True
    adapter.forward(batch)
    return torch.stack([attn.last_weights for attn in layers], dim=1)


def run_method(method: str, shape: str, n_cells: int, panel_size: int, batch: int) -> dict:
    import numpy as np
    import torch

    adapter, tokens, panel = prepare(shape, n_cells, panel_size, attn="eager" if method == "naive" else "sdpa")
    torch.set_num_threads(os.cpu_count() or 1)
    adapter.forward(tokens.subset(np.arange(1)))
    t0 = time.perf_counter()
    if method == "floor":
        for idx in tokens.batches(batch):
            adapter.forward(tokens.subset(idx))
    elif method == "ours":
        from analysis.interp.attention import extract_attention
        extract_attention(adapter, tokens, panel, batch_size=batch, progress=False)
    else:
        slot = {int(g): i for i, g in enumerate(panel["gene_index"])}
        G = len(panel)
        sums = np.zeros((adapter.n_layers, adapter.n_heads, G, G))
        for idx in tokens.batches(batch):
            sub = tokens.subset(idx)
            stacked = explicit_attentions(adapter, sub).numpy()          # [batch, L, H, S, S]
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
    ap.add_argument("--shapes", nargs="+", default=["V1-10M", "V2-104M", "scGPT-human"])
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
                  f"(target >= 2)", flush=True)


if __name__ == "__main__":
    main()
