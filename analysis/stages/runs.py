"""Which runs one precompute call makes (:func:`configs_to_run`) and running them (:func:`run_all`): in this process,
or, for the embedded default's independent runs, one process each, side by side.

This module imports nothing heavy (no torch, no stage): a parent that only starts the runs' processes does not pay
for imports its children make again (about 5 s before the first run could start).
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..config import RunConfig
from ..models import FAMILIES

log = logging.getLogger("precompute")


def configs_to_run(cfg: RunConfig) -> list[RunConfig]:
    """The runs one precompute call makes: ``cfg`` itself, or, for the embedded default with no family chosen
    (``model.path`` and ``model.family`` unset), one run per model family, so both families' runs are in the cache
    (the positive control's planted head needs a token-predicting family and is made for those only)."""
    if cfg.model.path is not None or cfg.model.family != "auto":
        return [cfg]
    families = [f for f in FAMILIES
                if cfg.train.planted_head < 0 or importlib.import_module(FAMILIES[f]).Adapter.predicts_tokens]
    return [dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, family=f)) for f in families]


def with_untrained_twins(cfgs: list[RunConfig]) -> list[RunConfig]:
    """``cfgs`` followed by each one's untrained twin: the same architecture with random weights (``model.random_init``,
    seeded by ``model.seed``), on the same cells and settings, as the control arm of ``--control random-weights``; a
    claim that holds for the twin too is architecture or data, not learning
    (:mod:`analysis.scoring.untrained_control`)."""
    from ..errors import ConfigError

    if any(cfg.model.random_init for cfg in cfgs):
        raise ConfigError("--control random-weights needs trained weights: the model is already random "
                          "(--random-weights); drop one of the two")
    return [*cfgs, *(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, random_init=True)) for cfg in cfgs)]


def _worker_init(n_threads: int) -> None:
    """A run's worker process (:func:`run_all`): its share of the cores, and the parent's log format."""
    from ..threads import bound_threads

    bound_threads(n_threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")


def run_one(cfg: RunConfig, cache: Path, progress: bool = True, client=None, **limits) -> Path | None:
    """:func:`analysis.stages.pipeline.run_precompute`, imported where the run happens (a worker imports the stages
    itself; the parent never needs them)."""
    from .pipeline import run_precompute

    return run_precompute(cfg, cache, progress=progress, client=client, **limits)


def run_all(cfgs: list[RunConfig], cache: Path, *, n_threads: int, progress: bool = True, client=None,
            memory_limit: int | None = None, plan_only: bool = False) -> list[Path | None]:
    """Run every config of :func:`configs_to_run`, returning the run directories in order. The embedded default's
    runs (one per family) are independent and their tiny models use a core poorly, so with at least as many cores
    as runs each run gets its own process and an equal share of the cores (``n_threads``); the cache's locks
    already let two precomputes share the embedded dataset. Progress bars are off there (they would interleave);
    the stage log stays. With a Dask ``client`` the runs take turns and share its cluster for extraction.
    ``memory_limit`` and ``plan_only``: as :func:`analysis.stages.pipeline.run_precompute` takes them (a plan-only
    call returns None per run)."""
    workers = min(len(cfgs), n_threads)
    limits = dict(memory_limit=memory_limit, plan_only=plan_only)
    if workers < 2 or client is not None or plan_only:
        return [run_one(cfg, cache, progress, client, **limits) for cfg in cfgs]
    log.info("%d runs in %d processes, %d thread(s) each", len(cfgs), workers, n_threads // workers)
    context = multiprocessing.get_context("spawn")   # a fresh interpreter: no thread pool or lock copied mid-use
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                             initargs=(n_threads // workers,)) as pool:
        futures = [pool.submit(run_one, cfg, cache, False, None, **limits) for cfg in cfgs]
        return [f.result() for f in futures]
