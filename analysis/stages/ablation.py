"""The ablation stage: the precomputed dose-response (paper sections 2.5, 4.5), resumable. Heads are ordered by AUROC
against the first reference (TF -> target) and, with perturbation data, by the composite score (that AUROC x the
layer's perturbation-first AUROC); random controls are matched on layer and on attention entropy
(:mod:`analysis.scoring.heads`); the whole-layer item is the best perturbation-first layer, as the paper's L14, unless
the user names layers. :func:`analysis.interp.ablation.sweep` defines the items and
:func:`analysis.rerun.ablation_tables` runs and scores them, as it does for the app's live ablations."""
from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from ..config import mlp_block_layers, stable_hash
from ..interp.ablation import sweep
from ..io import files, schemas
from ..io.artifacts import RunWriter
from ..io.stores import AttentionStore
from ..rerun import ablation_tables
from ..scoring.heads import attention_entropy, composite_order
from ..scoring.registry import StatsRegistry, ablation_tests
from .inputs import Inputs
from .timing import timed

log = logging.getLogger("precompute")


def head_auroc(ranking: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Every head's AUROC against ``reference`` (TF -> target), best first (columns layer, head, value)."""
    heads = ranking[(ranking["reference"] == reference) & (ranking["direction"] == "tf_to_target")
                    & (ranking["metric"] == "auroc") & (ranking["edge_type"] == "attention")]
    return heads.sort_values("value", ascending=False, kind="stable")[["layer", "head", "value"]]


def layer_perturbation_auroc(per_pert: pd.DataFrame | None) -> pd.Series | None:
    """Mean perturbation-first AUROC of each layer's head-mean attention (indexed by layer), or None."""
    if per_pert is None or per_pert.empty:
        return None
    layers = per_pert[per_pert["edge_type"] == "attention_layer_mean"]
    return layers.groupby("layer")["auroc"].mean() if len(layers) else None


def build_sweep(inp: Inputs, store: AttentionStore, ranking: pd.DataFrame, per_pert: pd.DataFrame | None) -> list:
    """The run's sweep items (:func:`analysis.interp.ablation.sweep`) from its settings and results."""
    cfg = inp.cfg.ablation
    aurocs = head_auroc(ranking, inp.references[0].name)
    by_layer = layer_perturbation_auroc(per_pert)
    whole = cfg.whole_layers or ((int(by_layer.idxmax()),) if by_layer is not None else ())
    return sweep(list(aurocs[["layer", "head"]].itertuples(index=False, name=None)), inp.adapter.n_layers,
                 readout_layer=inp.readout_layer, ks=cfg.ks, n_random=cfg.n_random, seed=cfg.seed,
                 random_matching=cfg.random_matching,
                 entropy=(attention_entropy(store.head_rows, np.asarray(store.counts)[store.source_rows])
                          if "entropy" in cfg.random_matching else None),
                 composite_order=composite_order(aurocs, by_layer) if by_layer is not None else None,
                 whole_layers=whole, mlp_blocks=[mlp_block_layers(b) for b in cfg.mlp_blocks])


def run(inp: Inputs, store: AttentionStore, ranking: pd.DataFrame, per_pert: pd.DataFrame | None,
        de_table: pd.DataFrame | None, writer: RunWriter, run_key: str) -> StatsRegistry:
    """Run (or reload) the sweep, write ``ablation_results`` and ``ablation_fidelity``; return its tests."""
    cfg = inp.cfg.ablation
    key = stable_hash({"run": run_key, "stage": "ablation", "schema": 3})   # 3: matched controls, composite, blocks
    if writer.is_done("ablation", key):
        results = schemas.validate("ablation_results", pd.read_parquet(writer.dir / files.table("ablation_results")))
        writer.mark_done("ablation", key, 0.0, skipped=True)
        return ablation_tests(results)
    t0 = time.perf_counter()
    with timed(f"ablation sweep ({cfg.n_cells} of the {inp.attention_cells.size} {inp.cfg.extraction.cells} cells)"):
        reference = inp.references[0]
        items = build_sweep(inp, store, ranking, per_pert)
        results, fidelity = ablation_tables(inp.adapter, inp.attention_tokens, store.panel, reference,
                                            np.asarray(store.counts) > 0, items, settings=cfg,
                                            readout_layer=inp.readout_layer, de_table=de_table)
        writer.write_table("ablation_results", results)
        writer.write_table("ablation_fidelity", fidelity)
    seconds = time.perf_counter() - t0
    n_cells = min(cfg.n_cells, inp.attention_cells.size)
    log.info("ablation: %d sweep items + the unablated pass on %d cells in %.1f s: %.1f s per item (%.2f s per cell "
             "and item, two forwards each)", len(items), n_cells, seconds, seconds / (len(items) + 1),
             seconds / (len(items) + 1) / max(n_cells, 1))
    writer.mark_done("ablation", key, seconds)
    return ablation_tests(results)
