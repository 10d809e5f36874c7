"""The embedded default, built once and reused: a simulated screen and, per model family, a tiny model of that
family's architecture trained on cells of the same simulated network, saved in the family's release layout (a
Geneformer HF checkpoint with dictionary pickles; scGPT's ``args.json`` + ``vocab.json`` + ``best_model.pt``), so the
rest of the pipeline treats it exactly like a real checkpoint.

Layout: ``cache/datasets/<sim hash>/{cells.h5ad, true_network_trrust.tsv}`` and
``cache/models/<family + sim + train hash>/`` (the checkpoint plus ``training_log.json``); each is written into a
temporary directory and renamed into place when complete.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from ..config import ConfigError, SimulationConfig, TokenizerConfig, TrainConfig, stable_hash
from ..io.cells import CellData, from_anndata
from ..io.locks import exclusive
from .simulate import simulate_screen

log = logging.getLogger(__name__)
PERTURBATION_COL, CELL_STATE_COL, CONTROL = "perturbation", "cell_state", "control"
PLANT_CELLS = 300  # training cells used to plant the positive-control head
TRAINING_LOG = "training_log.json"


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(final)


def _fresh(final: Path) -> Path:
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def ensure_dataset(sim: SimulationConfig, cache: Path) -> tuple[Path, Path]:
    """The simulated screen (h5ad) and its true network (TRRUST layout); created if absent."""
    final = cache / "datasets" / stable_hash(dataclasses.asdict(sim))[:16]
    with exclusive(cache, f"dataset-{final.name}", "the embedded dataset"):
        if not (final / "cells.h5ad").is_file():
            tmp = _fresh(final)
            adata, net = simulate_screen(sim)
            adata.write_h5ad(tmp / "cells.h5ad")
            net.write_trrust(tmp / "true_network_trrust.tsv")
            _publish(tmp, final)
    return final / "cells.h5ad", final / "true_network_trrust.tsv"


def training_cells(sim: SimulationConfig) -> tuple[CellData, set[tuple[str, str]]]:
    """An independent draw of unperturbed cells from the simulated network, and its true (TF, target) edges."""
    adata, net = simulate_screen(sim, seed_offset=1000, with_perturbations=False)
    edges = net.edges()
    return from_anndata(adata), set(zip(edges["tf"], edges["target"]))


def ensure_model(sim: SimulationConfig, train: TrainConfig, cache: Path, family: str,
                 progress: bool = True) -> tuple[Path, list]:
    """The tiny ``family`` model (trained on :func:`training_cells`), reused when one for the same simulation and
    training config exists; ``train.planted_head >= 0`` gives the positive-control variant (:func:`plant_model`)."""
    from ..models import FAMILIES

    key = stable_hash({"family": family, "simulation": dataclasses.asdict(sim),
                       "train": dataclasses.asdict(train)})[:16]
    final = cache / "models" / f"{family}-{key}"
    with exclusive(cache, f"model-{final.name}", f"the embedded {family} model"):
        if (final / TRAINING_LOG).is_file():
            return final, json.loads((final / TRAINING_LOG).read_text())
        if train.planted_head >= 0:
            return plant_model(sim, train, cache, final, family, progress)
        tmp = _fresh(final)
        cells, _ = training_cells(sim)
        history = importlib.import_module(FAMILIES[family]).train_tiny(cells, train, tmp, progress=progress)
        (tmp / TRAINING_LOG).write_text(json.dumps(history, indent=1))
        _publish(tmp, final)
        return final, history


def plant_model(sim: SimulationConfig, train: TrainConfig, cache: Path, final: Path, family: str,
                progress: bool) -> tuple[Path, list]:
    """The positive-control variant: the base embedded model with head ``train.planted_head`` of its last layer
    trained to carry the simulated network (analysis.interp.positive_control), on the base model's training cells."""
    from ..interp.positive_control import plant_head, target_sets
    from ..models.base import load_adapter

    base_dir, base_log = ensure_model(sim, dataclasses.replace(train, planted_head=-1), cache, family, progress)
    adapter = load_adapter(base_dir, family=family, device="cpu")
    if not adapter.predicts_tokens:
        raise ConfigError(f"train.planted_head: the positive control's behaviour (target recall) needs a model that "
                          f"predicts gene tokens; {family} predicts expression values")
    cells, edges = training_cells(sim)
    tokens = adapter.tokenizer(TokenizerConfig()).tokenize(cells)
    tokens = tokens.subset(np.arange(min(PLANT_CELLS, tokens.n_cells)))
    sets = target_sets(tokens, edges, adapter.vocab_size)
    layer = adapter.n_layers - 1
    log.info("planting head L%dH%d on %d TF positions", layer, train.planted_head, len(sets.cell))
    history = plant_head(adapter, tokens, sets, layer=layer, head=train.planted_head, seed=train.seed)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base_dir, tmp)
    adapter.save(tmp)
    (tmp / TRAINING_LOG).write_text(json.dumps(base_log + [{"planted": f"L{layer}H{train.planted_head}",
                                                             "planting_log": history}], indent=1))
    _publish(tmp, final)
    return final, json.loads((final / TRAINING_LOG).read_text())
