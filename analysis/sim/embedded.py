"""The embedded default, built once and reused: simulated screen + a tiny Geneformer-architecture model trained
on it, saved in the file formats of a real Geneformer release (HF checkpoint directory, token and gene-median
dictionary pickles), so the rest of the pipeline treats it exactly like a real checkpoint.

Layout: ``cache/datasets/<sim hash>/{cells.h5ad, true_network_trrust.tsv}`` and
``cache/models/<sim+train hash>/{config.json, model.safetensors, token_dictionary_sim.pkl, ...}``; each is
written into a temporary directory and renamed into place when complete.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..config import SimulationConfig, TrainConfig, stable_hash
from ..io.cells import from_anndata
from .simulate import simulate_screen
from ..models.geneformer.tokenizer import MASK, PAD, GeneformerDictionaries, save_dictionaries, tokenize

log = logging.getLogger(__name__)
PERTURBATION_COL, CELL_STATE_COL, CONTROL = "perturbation", "cell_state", "control"
PLANT_CELLS = 300  # training cells used to plant the positive-control head


@dataclass(frozen=True)
class EmbeddedDefault:
    data_path: Path
    reference_path: Path
    model_dir: Path
    training_log: list


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(final)


def gene_medians(counts: sp.csr_matrix, n_counts: np.ndarray) -> np.ndarray:
    """Geneformer's normalisation factors: per gene, the median of its non-zero CP10k values over cells."""
    norm = sp.csc_matrix(sp.diags(1e4 / n_counts) @ counts)
    return np.array([np.median(norm.data[norm.indptr[j]:norm.indptr[j + 1]]) if norm.indptr[j + 1] > norm.indptr[j]
                     else 1.0 for j in range(norm.shape[1])])


def ensure_dataset(sim: SimulationConfig, cache: Path) -> tuple[Path, Path]:
    """The simulated screen (h5ad) and its true network (TRRUST layout); created if absent."""
    final = cache / "datasets" / stable_hash(dataclasses.asdict(sim))[:16]
    if not (final / "cells.h5ad").is_file():
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        adata, net = simulate_screen(sim)
        adata.write_h5ad(tmp / "cells.h5ad")
        net.write_trrust(tmp / "true_network_trrust.tsv")
        _publish(tmp, final)
    return final / "cells.h5ad", final / "true_network_trrust.tsv"


def ensure_model(sim: SimulationConfig, train: TrainConfig, cache: Path, progress: bool = True) -> tuple[Path, list]:
    """Train the tiny model on an independent draw of cells from the same network (no perturbations); reuse it
    when a model for the same simulation and training config exists."""
    from ..models.geneformer.pretrain import train_mlm  # torch-heavy; only when training

    key = stable_hash({"simulation": dataclasses.asdict(sim), "train": dataclasses.asdict(train)})[:16]
    final = cache / "models" / key
    if (final / "config.json").is_file():
        return final, json.loads((final / "training_log.json").read_text())
    if train.planted_head >= 0:
        return plant_model(sim, train, cache, final, progress)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    adata, net = simulate_screen(sim, seed_offset=1000, with_perturbations=False)
    counts = sp.csr_matrix(adata.X)
    medians = gene_medians(counts, adata.obs["n_counts"].to_numpy(dtype=float))
    token = {PAD: 0, MASK: 1, **{g: i + 2 for i, g in enumerate(net.gene_ids)}}
    dicts = GeneformerDictionaries(token=token, median=dict(zip(net.gene_ids, medians.tolist())),
                                   name_to_id=dict(zip(net.symbols, net.gene_ids)), source=str(final))
    tokens = tokenize(from_anndata(adata), dicts, train.max_len)
    log.info("training the embedded tiny model on %d simulated cells (%d genes)", tokens.n_cells, len(net.symbols))
    model, history = train_mlm(tokens, dicts, train, progress=progress)
    model.save_pretrained(tmp)
    save_dictionaries(dicts, tmp, "sim")
    (tmp / "training_log.json").write_text(json.dumps(history, indent=1))
    _publish(tmp, final)
    return final, history


def plant_model(sim: SimulationConfig, train: TrainConfig, cache: Path, final: Path, progress: bool) -> tuple[Path, list]:
    """The positive-control variant: the base embedded model with head ``train.planted_head`` of its last layer
    trained to carry the simulated network (analysis.interp.positive_control), on the base model's training cells."""
    from ..models.geneformer.adapter import GeneformerAdapter
    from ..interp.positive_control import plant_head, target_sets
    from ..models.geneformer.tokenizer import load_dictionaries

    base_dir, base_log = ensure_model(sim, dataclasses.replace(train, planted_head=-1), cache, progress)
    adapter = GeneformerAdapter.from_pretrained(base_dir, device="cpu")
    dicts = load_dictionaries(base_dir)
    adata, net = simulate_screen(sim, seed_offset=1000, with_perturbations=False)
    tokens = tokenize(from_anndata(adata), dicts, train.max_len)
    tokens = tokens.subset(np.arange(min(PLANT_CELLS, tokens.n_cells)))
    sets = target_sets(tokens, set(zip(net.edges()["tf"], net.edges()["target"])), adapter.model.config.vocab_size)
    layer = adapter.n_layers - 1
    log.info("planting head L%dH%d on %d TF positions", layer, train.planted_head, len(sets.cell))
    history = plant_head(adapter, tokens, sets, layer=layer, head=train.planted_head, seed=train.seed)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    adapter.model.save_pretrained(tmp)
    for f in base_dir.glob("*.pkl"):
        shutil.copy(f, tmp / f.name)
    (tmp / "training_log.json").write_text(json.dumps(base_log + [{"planted": f"L{layer}H{train.planted_head}",
                                                                    "planting_log": history}], indent=1))
    _publish(tmp, final)
    return final, json.loads((final / "training_log.json").read_text())


def ensure_embedded(sim: SimulationConfig, train: TrainConfig, cache: Path, progress: bool = True) -> EmbeddedDefault:
    data, ref = ensure_dataset(sim, cache)
    model_dir, history = ensure_model(sim, train, cache, progress=progress)
    return EmbeddedDefault(data, ref, model_dir, history)
