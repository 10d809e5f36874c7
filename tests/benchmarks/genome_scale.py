"""Benchmark (not a test): a Replogle-K562-sized screen through the library out of core.

Generates, outside the repository (``--workdir``, default ``/tmp/genome_scale``; never commit it), a CRISPRi screen
as a real .h5ad written block by block in anndata's CSR layout: ``--genes`` genes (8,000) x ``--perts``
perturbations (2,000) + 3.5% non-targeting controls, Poisson counts over log-normal gene means and cell size
factors tuned to ~35% non-zero (K562 essential-screen density), each knock-down lowering its own gene to 15% and
moving 30 targets 2-fold (those pairs are the TRRUST-format reference written beside it). Then, for each
``--cells`` size, in a fresh process (peak memory per stage is the process's high-water mark, reset before each
stage through ``/proc/self/clear_refs``), with the product's default configuration:

  load+validate   load_cells(backed=True): obs/var read, every count checked in one streamed pass, n_counts
  moments         per-perturbation log1p-CP10k sums over every gene (one streamed pass; shared by what follows)
  panel           detection counts, evaluation universe and the attention panel (select_panel)
  controls        the control cells read into memory; Spearman edges over the panel (the attention cells' side)
  perturbation    analysis.stages.perturbation.run: DE, on-target, perturbation-first AUROC for every source, the
                  27-condition sensitivity grid (9 DE runs), incremental value and propensity matching (confounds)
  app box view    the Perturbation page's box plot built and serialised from the stage's tables
  app custom DE   what that page's custom-DE job runs: a fresh load, moments, DE, baselines, AUROC

The attention edges fed to the perturbation stage are random scores over the panel (4 layers x 4 heads): their
values do not change the cost, and extraction's own scaling is targets 1-3 (it runs on the control cells only).

With ``--precompute`` each size is then run end to end by ``precompute.py`` under ``/usr/bin/time -v`` (wall, peak
RSS, the stage log): a tiny random-weight Geneformer (BERT, 2 layers x 4 heads, 64 wide, 512 tokens) over the
screen's genes, written beside the screen in the real checkpoint + dictionary formats, with the product defaults;
every cell is tokenised (in blocks) and attention, ablation and CSSI run on the control cells.

    python tests/benchmarks/genome_scale.py [--cells 30000,100000,300000] [--genes 8000] [--perts 2000] [--precompute]

The last line gives the ratio of peak memory at the largest size to the smallest, against the ratio of cells.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

CONTROL_FRACTION = 0.035
N_TARGETS = 30
GENERATE_ROWS = 4_096


def _peak_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _peak_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024 ** 2
    raise RuntimeError("no VmHWM in /proc/self/status")


def design(n_genes: int, n_perts: int, seed: int) -> dict:
    """Gene means, perturbed genes (among the better-expressed half) and each knock-down's targets and fold."""
    rng = np.random.default_rng(seed)
    mu = rng.lognormal(-0.9, 1.4, n_genes)
    expressed = np.argsort(-mu)[: n_genes // 2]
    own = np.sort(rng.choice(expressed, n_perts, replace=False))
    targets = rng.integers(0, n_genes, (n_perts, N_TARGETS))
    fold = np.where(rng.random((n_perts, N_TARGETS)) < 0.5, 0.5, 2.0)
    return {"mu": mu, "own": own, "targets": targets, "fold": fold}


def write_screen(path: Path, n_cells: int, n_genes: int, n_perts: int, seed: int = 0) -> None:
    """The screen as an .h5ad (module doc), written in blocks of rows so memory stays one block; the reference
    ``<path>.trrust.tsv`` beside it."""
    from anndata.io import write_elem

    d = design(n_genes, n_perts, seed)
    rng = np.random.default_rng(seed + 1)
    symbols = np.array([f"GENE{i}" for i in range(n_genes)])
    code = np.where(rng.random(n_cells) < CONTROL_FRACTION, -1, rng.integers(0, n_perts, n_cells))
    labels = np.where(code < 0, "non-targeting", symbols[d["own"][np.maximum(code, 0)]])
    size = rng.lognormal(0, 0.35, n_cells)
    tmp = path.with_suffix(".partial")
    with h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        write_elem(f, "obs", pd.DataFrame({"perturbation": pd.Categorical(labels)},
                                          index=[f"cell{i:07d}" for i in range(n_cells)]))
        write_elem(f, "var", pd.DataFrame({"symbol": symbols}, index=[f"ENSG{i:011d}" for i in range(n_genes)]))
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_cells, n_genes)})
        data = x.create_dataset("data", (0,), np.float32, maxshape=(None,), chunks=(1 << 20,))
        indices = x.create_dataset("indices", (0,), np.int32, maxshape=(None,), chunks=(1 << 20,))
        indptr = [np.zeros(1, np.int64)]
        for start in range(0, n_cells, GENERATE_ROWS):
            stop = min(start + GENERATE_ROWS, n_cells)
            lam = size[start:stop, None] * d["mu"][None, :]
            rows = np.nonzero(code[start:stop] >= 0)[0]
            c = code[start:stop][rows]
            lam[rows, d["own"][c]] *= 0.15
            lam[np.repeat(rows, N_TARGETS), d["targets"][c].ravel()] *= d["fold"][c].ravel()
            block = sp.csr_matrix(rng.poisson(lam).astype(np.float32))
            at = data.shape[0]
            data.resize((at + block.nnz,))
            indices.resize((at + block.nnz,))
            data[at:], indices[at:] = block.data, block.indices.astype(np.int32)
            indptr.append(block.indptr[1:].astype(np.int64) + at)
        x.create_dataset("indptr", data=np.concatenate(indptr))
        for group in ("layers", "obsm", "obsp", "varm", "varp", "uns"):
            write_elem(f, group, {})
    tmp.rename(path)
    pairs = pd.DataFrame({"tf": np.repeat(symbols[d["own"]], N_TARGETS), "target": symbols[d["targets"].ravel()],
                          "mode": np.where(d["fold"].ravel() > 1, "Activation", "Repression"), "pmid": "0"})
    pairs.to_csv(f"{path}.trrust.tsv", sep="\t", header=False, index=False)


def measure(path: Path) -> dict:
    """Every stage of the module doc on ``path``; ``{stage: {"seconds", "peak_gib"}}`` plus sizes."""
    from analysis.config import RunConfig
    from analysis.io.cells import load_cells
    from analysis.io.references import load_trrust
    from analysis.scoring.edges import EdgeScores, combine, spearman_edges
    from analysis.scoring.panel import evaluation_universe, select_panel
    from analysis.scoring.perturbation import differential_expression, gene_level_scores, perturbation_auroc
    from analysis.stages import perturbation
    from app.figures import perturbation_box
    from app.pages.perturbation import _label_frame

    from analysis.threads import bound_threads

    bound_threads(os.cpu_count() or 1)
    cfg = RunConfig()
    out: dict = {}

    def stage(name, fn):
        _peak_reset()
        t0 = time.perf_counter()
        value = fn()
        out[name] = {"seconds": round(time.perf_counter() - t0, 1), "peak_gib": round(_peak_gib(), 2)}
        print(f"  {name:14s} {out[name]['seconds']:7.1f} s  peak {out[name]['peak_gib']:5.2f} GiB", flush=True)
        return value

    kwargs = dict(perturbation_col="perturbation", control_label="non-targeting", require_ensembl=False)
    cells = stage("load+validate", lambda: load_cells(path, backed=True, **kwargs))
    stage("moments", lambda: cells.moments)
    ref = load_trrust(f"{path}.trrust.tsv")
    genes = pd.DataFrame({"gene_id": cells.gene_ids, "symbol": cells.symbols})

    def panel():
        present = cells.moments.pooled().detected[0]
        pert = cfg.perturbation
        return select_panel(cells, genes, present, reference_tfs=ref.tfs, n_hvg=cfg.extraction.n_hvg,
                            panel_size=cfg.extraction.panel_size,
                            universe=evaluation_universe(cells, genes, present, pert.universe, pert.universe_size))
    panel = stage("panel", panel)
    corr = stage("controls", lambda: spearman_edges(cells.controls(), panel))
    g, rng = len(panel), np.random.default_rng(0)
    sources = pd.DataFrame([("attention", l, h) for l in range(4) for h in range(4)]
                           + [("attention_layer_mean", l, -1) for l in range(4)], columns=["edge_type", "layer", "head"])
    heads = rng.random((4, 4, g, g))
    attention = EdgeScores(np.concatenate([heads.reshape(16, g, g), heads.mean(1)]), sources,
                           np.ones((g, g), bool), panel, {})
    result = stage("perturbation", lambda: perturbation.run(cells, panel, attention, corr, [ref], cfg.perturbation))

    def views():
        per = result.tables["perturbation_auroc"]
        box = perturbation_box(_label_frame(per, 3, None), readout_layer=3)
        return len(box.to_json())
    stage("app box view", views)

    def custom_de():     # what the page's custom-DE job runs (app.pages.perturbation.custom_de), on a fresh load
        fresh = load_cells(path, backed=True, **kwargs)
        de = differential_expression(fresh, panel, lfc_threshold=0.5, n_control=None, test="welch")
        base = gene_level_scores(fresh, panel)
        return perturbation_auroc(combine(attention.select("attention_layer_mean"),
                                          spearman_edges(fresh.controls(), panel), base), de)
    stage("app custom DE", custom_de)
    out["sizes"] = {"cells": cells.n_cells, "genes": int(cells.gene_ids.size), "panel": g,
                    "perturbations": len(result.tables["de_groups"]),
                    "evaluable": int(result.tables["perturbation_auroc"]["perturbation"].nunique()),
                    "file_gib": round(path.stat().st_size / 1024 ** 3, 2)}
    return out


def tiny_checkpoint(directory: Path, gene_ids: list[str]) -> Path:
    """A random-weight Geneformer checkpoint for ``gene_ids`` (module doc): config.json and the dictionaries."""
    from transformers import BertConfig

    from analysis.models.geneformer.tokenizer import GeneformerDictionaries, save_dictionaries

    if (directory / "config.json").exists():
        return directory
    token = {"<pad>": 0, "<mask>": 1, **{g: 2 + i for i, g in enumerate(gene_ids)}}
    BertConfig(vocab_size=len(token), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=128, max_position_embeddings=512, hidden_act="relu", pad_token_id=0,
               architectures=["BertForMaskedLM"]).save_pretrained(directory)
    save_dictionaries(GeneformerDictionaries(token=token, median={g: 1.0 for g in gene_ids}), directory, "bench")
    return directory


def run_precompute(path: Path, workdir: Path) -> dict:
    """``precompute.py`` end to end on ``path`` (module doc): wall seconds, peak RSS and the stage log's lines."""
    from anndata.io import read_elem

    with h5py.File(path, "r") as f:
        gene_ids = list(read_elem(f["var"]).index)
    model = tiny_checkpoint(workdir / "tiny-geneformer", gene_ids)
    cache = workdir / f"cache-{path.stem}"
    cmd = ["/usr/bin/time", "-v", sys.executable, str(Path(__file__).resolve().parents[2] / "precompute.py"),
           "--cache", str(cache), "--data", str(path), "--model", str(model), "--random-weights",
           "--perturbation-col", "perturbation", "--control-label", "non-targeting",
           "--reference", f"trrust:{path}.trrust.tsv", "--name", "genome-scale"]
    t0 = time.perf_counter()
    child = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if child.returncode != 0:
        raise SystemExit(child.stdout + child.stderr[-5000:])
    peak_kib = next(int(l.split()[-1]) for l in child.stderr.splitlines() if "Maximum resident set size" in l)
    stages = [l for l in child.stderr.splitlines() if " done in " in l]
    return {"seconds": round(wall, 1), "peak_gib": round(peak_kib / 1024 ** 2, 2), "log": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="30000,100000,300000")
    ap.add_argument("--genes", type=int, default=8_000)
    ap.add_argument("--perts", type=int, default=2_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/genome_scale"))
    ap.add_argument("--precompute", action="store_true", help="also run precompute.py end to end at each size")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)      # the child process's entry
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    for n in [int(c) for c in args.cells.split(",")]:
        path = args.workdir / f"screen_{n}x{args.genes}x{args.perts}.h5ad"
        if not path.exists():
            t0 = time.perf_counter()
            write_screen(path, n, args.genes, args.perts)
            print(f"generated {path} ({path.stat().st_size / 1024 ** 3:.2f} GiB) in {time.perf_counter() - t0:.0f} s",
                  flush=True)
        print(f"{n} cells:", flush=True)
        child = subprocess.run([sys.executable, __file__, "--measure", str(path)], capture_output=True, text=True,
                               env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if child.returncode != 0:
            raise SystemExit(child.stdout + child.stderr)
        lines = child.stdout.rstrip().splitlines()
        print("\n".join(lines[:-1]), flush=True)
        results[n] = json.loads(lines[-1])
        print(f"  sizes {results[n]['sizes']}", flush=True)
        if args.precompute:
            results[n]["precompute.py"] = run_precompute(path, args.workdir)
            print("\n".join(f"    {l}" for l in results[n]["precompute.py"].pop("log")), flush=True)
            print(f"  precompute.py  {results[n]['precompute.py']['seconds']:7.1f} s  peak "
                  f"{results[n]['precompute.py']['peak_gib']:5.2f} GiB", flush=True)
    sizes = sorted(results)
    stages = [k for k in results[sizes[0]] if k != "sizes"]
    print("\nstage            " + "".join(f"{n:>22,d}" for n in sizes))
    for s in stages:
        print(f"{s:16s} " + "".join(f"{results[n][s]['seconds']:>10.1f} s {results[n][s]['peak_gib']:>6.2f} GiB"
                                    for n in sizes))
    peak = {n: max(results[n][s]["peak_gib"] for s in stages) for n in sizes}
    print(f"peak memory {peak[sizes[-1]]:.2f} GiB at {sizes[-1]:,} cells vs {peak[sizes[0]]:.2f} GiB at "
          f"{sizes[0]:,}: ratio {peak[sizes[-1]] / peak[sizes[0]]:.2f} for {sizes[-1] / sizes[0]:.0f}x the cells")


if __name__ == "__main__":
    main()
