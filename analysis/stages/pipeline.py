"""The precompute stages, in order: inputs -> attention -> edges -> ranking -> layer biology -> reference confounds ->
perturbation -> ablation -> CSSI -> scaling -> SAE -> statistics registry -> manifest, for one model
(:func:`run_precompute`; :mod:`.runs` says which runs a call makes and runs them side by side).

Every input is loaded and validated before anything is written under ``cache/artifacts`` (a bad input leaves no
trace there). The costly stages (attention extraction, ablation sweep, CSSI) record the hash of their inputs and are
skipped when a killed run resumes; the others are cheap and recomputed. A run's id names its model family:
``<name>-<family>-<hash>``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from ..config import RunConfig, stable_hash
from ..errors import InputError
from ..io import files, schemas, spreadsheet
from ..io.artifacts import RunWriter, read_manifest
from ..io.locks import exclusive
from ..io.schemas import SchemaError
from . import ablation, attention, biology, confounds, cssi, perturbation, plan, ranking, sae, scaling
from .calibration import calibrate
from .memory import PeakRSS, collector_on_run_objects, memory_limit as default_memory_limit
from .inputs import Inputs, resolve_inputs
from .timing import timed

log = logging.getLogger("precompute")


def manifest(inp: Inputs, store_panel: pd.DataFrame, run_key: str, wall_seconds: float, run_plan: dict) -> dict:
    """The run's manifest fields (:class:`analysis.io.manifest.RunManifest`; the writer adds files and versions)."""
    cfg, adapter = inp.cfg, inp.adapter
    return {
        "config": cfg.to_dict(), "config_hash": cfg.config_hash(), "run_key": run_key,
        "inputs": {**inp.input_hashes, "model_dir": str(inp.model_dir), "model_sha256": adapter.checkpoint_sha256,
                   "official_model": adapter.official_name, "dictionaries": inp.tokenizer.source},
        "model": {**adapter.describe(), "random_init": cfg.model.random_init},
        "data": {"n_cells": inp.cells.n_cells, "n_genes": int(inp.cells.gene_ids.size),
                 "n_vocab_genes": int(len(inp.attention_tokens.genes)), "panel_size": int(len(store_panel)),
                 "perturbations": inp.cells.perturbed_genes(), "cell_state_col": inp.cells.cell_state_col,
                 "attention_cells": int(inp.attention_cells.size), "attention_cell_selection": cfg.extraction.cells,
                 "universe": cfg.perturbation.universe, "universe_genes": int(store_panel["in_universe"].sum()),
                 "perturbations_left_out": len(inp.left_out), "counts_source": inp.cells.counts_source},
        "protocol": inp.protocol_record(),
        "readout_layer": inp.readout_layer,
        "references": [r.params | {"name": r.name} for r in inp.references],
        "seeds": {"extraction": cfg.extraction.seed, "ranking": cfg.ranking.seed, "model": cfg.model.seed,
                  "simulation": cfg.simulation.seed, "train": cfg.train.seed, "tokenizer": cfg.tokenizer.seed},
        "provenance": inp.provenance, "tokenizer": inp.attention_tokens.params, "wall_seconds": round(wall_seconds, 2),
        "plan": run_plan,
    }


def run_precompute(cfg: RunConfig, cache: Path, progress: bool = True, client=None, *,
                   memory_limit: int | None = None, plan_only: bool = False) -> Path | None:
    """Run every stage for ``cfg`` (one model) into ``cache``; returns the run directory. ``client``: a Dask client
    whose cluster extracts attention (:mod:`.distributed`). Before any stage, the run's plan (:mod:`.plan`) is
    logged and checked against ``memory_limit`` bytes (default: what the machine and its cgroup allow): a run that
    will not fit stops with an InputError and writes nothing; ``plan_only`` stops after the plan (returns None)."""
    t_start = time.perf_counter()
    with collector_on_run_objects():
        with timed("inputs"):
            inp = resolve_inputs(cfg, cache, progress=progress)
        if departures := inp.protocol_record()["deviations"]:
            log.warning("protocol %s, %d departure(s) (in the manifest and every page header): %s", cfg.protocol,
                        len(departures), "; ".join(f"{d['setting']}: paper {d['paper']}, this run {d['run']}"
                                                   for d in departures))
        with timed("plan"):
            limit = memory_limit or default_memory_limit()
            calibration = calibrate(inp, Path(cache))
            estimates = plan.estimate(inp, calibration)
        log.info("%s", plan.describe(estimates, limit, calibration))
        if any(row.memory > limit for row in estimates):
            plan.check(estimates, limit, plan.largest_fitting_batch(inp, calibration, limit))
        if plan_only:
            return None
        run_plan = plan.record(estimates, limit, calibration)
        run_key = stable_hash({"config": inp.cfg.to_dict(), "inputs": inp.input_hashes, "model": inp.model_hash()})
        run_id = f"{cfg.name}-{inp.adapter.family}-{run_key[:10]}"
        with exclusive(cache, f"run-{run_id}", f"run {run_id}") as waited:
            if waited and (finished := _finished(cache, run_id, run_key)) is not None:
                log.info("run %s was just written by the precompute this one waited for; reusing it", run_id)
                return finished
            return _write_run(inp, cache, run_id, run_key, t_start, progress, client, run_plan)


def _finished(cache: Path, run_id: str, run_key: str) -> Path | None:
    """The complete run directory ``run_id`` when its manifest records ``run_key``, else None."""
    final = Path(cache) / "artifacts" / run_id
    try:
        return final if read_manifest(final).run_key == run_key else None
    except SchemaError:
        return None


def _write_run(inp: Inputs, cache: Path, run_id: str, run_key: str, t_start: float, progress: bool,
               client, run_plan: dict) -> Path:
    """Every stage after the inputs, into the run's partial directory, published as complete at the end; each
    stage's measured resident peak goes into its timing row, next to the plan."""
    writer = RunWriter(cache, run_id).open()
    with PeakRSS() as peaks:
        writer.peak_memory = peaks.take
        return _stages(inp, writer, run_key, t_start, progress, client, run_plan)


def _stages(inp: Inputs, writer: RunWriter, run_key: str, t_start: float, progress: bool, client,
            run_plan: dict) -> Path:
    log.info("run %s -> %s", writer.run_id, writer.final)
    try:
        store, key = attention.run(inp, writer, run_key, progress, client)
        heads, layer_means, corr_edges = attention.edges(inp, store, writer, key)
        head_ranking = ranking.run(inp, heads, layer_means, corr_edges, writer, key)
        registry = ranking.registry(head_ranking, inp.readout_layer)
        registry.extend(biology.stage(inp, layer_means, corr_edges, writer, key))
        registry.extend(confounds.stage(inp, layer_means, corr_edges, writer, key))
        de_table = per_pert = None
        if inp.cells.perturbation_col is not None:
            pert = perturbation.stage(inp, heads, layer_means, corr_edges, writer, key)
            registry.extend(pert.registry)
            de_table, per_pert = pert.evaluable("de_results"), pert.evaluable("perturbation_auroc")
            del pert                          # its other tables are written; only the ablation reads these two
        if inp.cfg.ablation.n_cells > 0:
            registry.extend(ablation.run(inp, store, head_ranking, per_pert, de_table, writer, run_key))
        del de_table, per_pert                # a DE row per (perturbation, gene): not held under the later stages
        if inp.cfg.cssi.n_fine > 0:
            registry.extend(cssi.run(inp, store, writer, run_key, progress))
        registry.extend(scaling.stage(inp, store.panel, writer, key))
        registry.extend(sae.stage(inp, store.panel, writer, run_key, progress))
        stats_table = schemas.validate("statistics_registry", registry.table())
        stats_table.to_parquet(writer.dir / files.table("statistics_registry"), index=False)
        spreadsheet.to_csv(stats_table, writer.dir / files.STATISTICS_CSV, index=False)
        pd.DataFrame(writer.timings).pipe(lambda f: schemas.validate("stage_timings", f)).to_parquet(
            writer.dir / files.table("stage_timings"), index=False)
        return writer.finish(manifest(inp, store.panel, run_key, time.perf_counter() - t_start, run_plan))
    except InputError:
        writer.discard()
        raise
