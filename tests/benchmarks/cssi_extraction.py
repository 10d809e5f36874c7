"""Benchmark (not a test): the cost of CSSI's grouped extraction pass against the pooled extraction and the plain
forward pass, on the same cells, on CUDA when present (else CPU), with a Geneformer V1-10M-shaped random model
(6 layers x 4 heads, d_model 256, 2,048 positions) on simulated cells of ~2,000 expressed genes.

- floor: plain SDPA forward, no extraction;
- pooled: :func:`analysis.interp.attention.extract_attention` (every layer: per head the source genes' rows and
  columns, per layer the head mean over every pair);
- grouped: :func:`analysis.interp.attention.extract_grouped_attention` (every layer, ``F + M`` group stores at once: the
  CSSI fine clusters and the random null groups, each cell adding to one group of each; per head the rows of every
  gene, or with ``--rows tfs`` of the reference TFs).

Also checks that the fine groups sum to the pooled store, and (on CUDA) that CUDA and CPU agree on a few cells.
Prints cells/s and the ratios grouped/pooled and pooled/floor.

    python tests/benchmarks/cssi_extraction.py [--cells 256] [--panel 600] [--fine 30] [--random 40] [--rows all|tfs]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def build(n_cells: int, panel_size: int, seed: int = 0):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from analysis.config import SimulationConfig
    from analysis.io.cells import from_anndata
    from analysis.scoring.panel import select_panel
    from analysis.sim.simulate import simulate_screen
    from analysis.models.geneformer.tokenizer import GeneformerDictionaries, tokenize

    adata, net = simulate_screen(SimulationConfig(n_cells=n_cells, n_tfs=40, n_targets=1960, seed=seed))
    cells = from_anndata(adata, perturbation_col="perturbation", cell_state_col="cell_state")
    token = {"<pad>": 0, "<mask>": 1, **{g: i + 2 for i, g in enumerate(net.gene_ids)}}
    dicts = GeneformerDictionaries(token=token, median={g: 1.0 for g in net.gene_ids},
                                   name_to_id=dict(zip(net.symbols, net.gene_ids)))
    tokens = tokenize(cells, dicts, max_len=2048)
    panel = select_panel(cells, tokens.genes, tokens.gene_presence(), reference_tfs=set(net.symbols[: net.n_tfs]),
                         n_hvg=panel_size, panel_size=panel_size)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(token), hidden_size=256, num_hidden_layers=6, num_attention_heads=4,
                     intermediate_size=512, max_position_embeddings=2048, hidden_act="relu")
    return tokens, panel, BertForMaskedLM(cfg).eval()


def timed(fn, device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    import numpy as np
    import torch

    from analysis.interp.attention import extract_attention, extract_grouped_attention
    from analysis.models.base import resolve_device
    from analysis.models.geneformer.adapter import GeneformerAdapter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=256)
    ap.add_argument("--panel", type=int, default=600)
    ap.add_argument("--fine", type=int, default=30)
    ap.add_argument("--random", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rows", choices=("all", "tfs"), default="all")
    args = ap.parse_args()
    device = resolve_device(args.device)
    tokens, panel, model = build(args.cells, args.panel)
    adapter = GeneformerAdapter(model, device=device, name="V1-10M shape, random", checkpoint_sha256=None)
    rng = np.random.default_rng(0)
    groups = np.stack([rng.integers(0, args.fine, tokens.n_cells),
                       args.fine + rng.permutation(np.arange(tokens.n_cells) % args.random)], axis=1)
    n_groups = args.fine + args.random
    layers = tuple(range(adapter.n_layers))
    sources = (np.arange(len(panel)) if args.rows == "all"
               else np.nonzero(panel["is_tf"].to_numpy(dtype=bool))[0])
    bs = args.batch_size
    warm = tokens.subset(np.arange(min(bs, tokens.n_cells)))
    extract_grouped_attention(adapter, warm, panel, groups[: warm.n_cells], n_groups, layers=layers,
                              sources=sources, batch_size=bs, progress=False)   # warm-up: kernels, allocator

    def floor():
        with torch.no_grad():
            for idx in tokens.batches(bs):
                sub = tokens.subset(idx)
                adapter.forward(sub)

    _, t_floor = timed(floor, device)
    pooled, t_pooled = timed(lambda: extract_attention(adapter, tokens, panel, batch_size=bs, progress=False), device)
    grouped, t_grouped = timed(lambda: extract_grouped_attention(adapter, tokens, panel, groups, n_groups,
                                                                 layers=layers, sources=sources, batch_size=bs,
                                                                 progress=False), device)
    fine_sum = grouped.layer_sums[: args.fine].sum(axis=0)
    rel = np.abs(fine_sum - pooled.layer_sums).max() / np.abs(pooled.layer_sums).max()
    counts_ok = np.array_equal(grouped.counts[: args.fine].sum(axis=0), pooled.counts)
    n = tokens.n_cells
    print(f"device {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}), torch "
          f"{torch.__version__}; {n} cells, mean length {tokens.lengths.mean():.0f} tokens, panel {len(panel)} genes, "
          f"{args.fine} fine + {args.random} random groups, {len(layers)} layers x {adapter.n_heads} heads, "
          f"batch {bs}")
    print(f"group store {grouped.nbytes() / 2 ** 30:.2f} GiB; pooled store {pooled.nbytes() / 2 ** 30:.3f} GiB")
    for name, t in (("floor (plain forward)", t_floor), ("pooled extraction", t_pooled),
                    ("grouped extraction (CSSI)", t_grouped)):
        print(f"{name:28s} {t:8.2f} s  {n / t:8.1f} cells/s")
    print(f"ratios: grouped/pooled {t_grouped / t_pooled:.2f}x, pooled/floor {t_pooled / t_floor:.2f}x, "
          f"grouped/floor {t_grouped / t_floor:.2f}x")
    print(f"fine groups sum to the pooled store: counts equal {counts_ok}, max relative difference {rel:.2e}")
    if device.type == "cuda":
        few = tokens.subset(np.arange(min(16, n)))
        cpu = GeneformerAdapter(model, device=torch.device("cpu"), name="cpu", checkpoint_sha256=None)
        on_cpu = extract_grouped_attention(cpu, few, panel, groups[: few.n_cells], n_groups, layers=layers,
                                           sources=sources, batch_size=bs, progress=False)
        adapter = GeneformerAdapter(model, device=device, name="cuda", checkpoint_sha256=None)
        on_gpu = extract_grouped_attention(adapter, few, panel, groups[: few.n_cells], n_groups, layers=layers,
                                           sources=sources, batch_size=bs, progress=False)
        diff = np.abs(on_gpu.head_rows - on_cpu.head_rows).max() / np.abs(on_cpu.head_rows).max()
        print(f"CUDA vs CPU on {few.n_cells} cells: counts equal {np.array_equal(on_gpu.counts, on_cpu.counts)}, "
              f"max relative difference of sums {diff:.2e}")


if __name__ == "__main__":
    main()
