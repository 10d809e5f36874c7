"""The ablation stage: the precomputed dose-response (paper sections 2.5, 4.5), resumable. Heads are ordered by AUROC
against the first reference (TF -> target); :func:`analysis.interp.ablation.sweep` defines the items and
:func:`analysis.rerun.ablation_tables` runs and scores them, as it does for the app's live ablations."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from ..config import stable_hash
from ..interp.ablation import sweep
from ..io import files, schemas
from ..io.artifacts import RunWriter
from ..io.stores import AttentionStore
from ..rerun import ablation_tables
from ..scoring.registry import StatsRegistry, ablation_tests
from .inputs import Inputs
from .timing import timed


def head_order(ranking: pd.DataFrame, reference: str) -> list[tuple[int, int]]:
    """Every (layer, head), best AUROC against ``reference`` (TF -> target) first."""
    heads = ranking[(ranking["reference"] == reference) & (ranking["direction"] == "tf_to_target")
                    & (ranking["metric"] == "auroc") & (ranking["edge_type"] == "attention")]
    return list(heads.sort_values("value", ascending=False, kind="stable")[["layer", "head"]]
                .itertuples(index=False, name=None))


def run(inp: Inputs, store: AttentionStore, ranking: pd.DataFrame, de_table: pd.DataFrame | None,
        writer: RunWriter, run_key: str) -> StatsRegistry:
    """Run (or reload) the sweep, write ``ablation_results`` and ``ablation_fidelity``; return its tests."""
    cfg = inp.cfg.ablation
    key = stable_hash({"run": run_key, "stage": "ablation", "schema": 2})   # 2: results carry ``structural``
    if writer.is_done("ablation", key):
        results = schemas.validate("ablation_results", pd.read_parquet(writer.dir / files.table("ablation_results")))
        writer.mark_done("ablation", key, 0.0, skipped=True)
        return ablation_tests(results)
    t0 = time.perf_counter()
    with timed(f"ablation sweep ({cfg.n_cells} of the {inp.attention_cells.size} {inp.cfg.extraction.cells} cells)"):
        reference = inp.references[0]
        items = sweep(head_order(ranking, reference.name), inp.adapter.n_layers, readout_layer=inp.readout_layer,
                      ks=cfg.ks, n_random=cfg.n_random, seed=cfg.seed)
        results, fidelity = ablation_tables(inp.adapter, inp.attention_tokens, store.panel, reference,
                                            np.asarray(store.counts) > 0, items, settings=cfg,
                                            readout_layer=inp.readout_layer, de_table=de_table)
        schemas.validate("ablation_results", results).to_parquet(writer.dir / files.table("ablation_results"),
                                                                 index=False)
        schemas.validate("ablation_fidelity", fidelity).to_parquet(writer.dir / files.table("ablation_fidelity"),
                                                                   index=False)
    writer.mark_done("ablation", key, time.perf_counter() - t0)
    return ablation_tests(results)
