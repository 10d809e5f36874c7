"""The scaling stage (paper section 2.2, Supplementary Notes 1, 13 and 14): recovery against the number of cells with
sign and trend tests, group-bootstrap CIs at each count, controlled composition on correlation edges, and the
per-TF bootstrap (:mod:`analysis.scoring.scaling`, :mod:`analysis.scoring.tf_bootstrap`). It reads CSSI's grouped
extraction pass from the run directory, so it costs no forward pass and runs when CSSI ran."""
from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from ..io import files
from ..io.artifacts import RunWriter
from ..scoring import cssi_levels
from ..scoring.registry import StatsRegistry
from ..scoring.strata import add_level
from ..scoring.scaling import (SCALED_SITES, bootstrap_curve, cell_count_curves, composition_curve,
                               composition_tests, scaling_tests)
from ..scoring.tf_bootstrap import tf_bootstrap, tf_bootstrap_tests
from .inputs import Inputs
from .timing import timed

log = logging.getLogger("precompute")
TABLES = ("scaling_curve", "scaling_agreement", "scaling_bootstrap", "composition_curve", "tf_bootstrap")


def cell_states(run: cssi_levels.CSSIRun, primary_n_strata: int) -> tuple[np.ndarray, str]:
    """Per attention cell: its labelled cell state (the data's cell-state column) or, with none, its CSSI stratum
    at the pre-specified level; and which it is."""
    state = run.cells["cell_state"].astype(str).to_numpy()
    if (state != "").all():
        return state, "cell-state column"
    k = min(primary_n_strata, run.strata.n_fine)   # the level may be off the grid the fine clusters could hold
    states = add_level(run.strata, k).assignment(k)[run.strata.fine].astype(str)
    return states, f"CSSI strata ({k}; no cell-state column)"


def tables(run: cssi_levels.CSSIRun, panel: pd.DataFrame, inp: Inputs) -> tuple[dict[str, pd.DataFrame], StatsRegistry]:
    """The scaling tables (:data:`TABLES`, those the settings ask for) of a CSSI ``run`` over ``panel`` against the
    run's references, and their registry tests."""
    cfg = inp.cfg.scaling
    registry = StatsRegistry()
    observed = cssi_levels.observed_pairs(run)
    states, state_source = cell_states(run, inp.cfg.cssi.primary_n_strata)
    readout = inp.readout_layer
    out = {name: [] for name in TABLES}
    for ref in inp.references:
        sites = run.source.sites
        data = run.source.data(cssi_levels.pair_set(panel, ref, observed, "tf_to_target"),
                               sites=sites[sites["edge_type"].isin(SCALED_SITES)])
        tag = {"reference": ref.name}
        curve, agreement = cell_count_curves(data, fractions=cfg.unit_fractions, n_seeds=cfg.n_seeds,
                                          top_k=cfg.top_k, seed=cfg.seed)
        out["scaling_curve"].append(curve.assign(**tag))
        out["scaling_agreement"].append(agreement.assign(**tag))
        registry.extend(scaling_tests(curve, readout_layer=readout, reference=ref.name))
        if cfg.n_boot:
            out["scaling_bootstrap"].append(bootstrap_curve(data, fractions=cfg.unit_fractions,
                                                            n_boot=cfg.n_boot, seed=cfg.seed).assign(**tag))
        comp = composition_curve(run.source.expression, states, data.pairs,
                                 fractions=cfg.composition_fractions, n_seeds=cfg.n_seeds, seed=cfg.seed)
        out["composition_curve"].append(comp.assign(**tag, states_from=state_source))
        registry.extend(composition_tests(comp, reference=ref.name))
        if cfg.tf_boot:
            tfb = tf_bootstrap(data, panel["symbol"].to_numpy(), n_boot=cfg.tf_boot, seed=cfg.seed,
                               sites=[("attention_layer_mean", readout), ("spearman", -1)])
            out["tf_bootstrap"].append(tfb.assign(**tag))
            registry.extend(tf_bootstrap_tests(tfb, reference=ref.name))
    return {name: pd.concat(frames, ignore_index=True) for name, frames in out.items() if frames}, registry


def stage(inp: Inputs, panel: pd.DataFrame, writer: RunWriter, key: str) -> StatsRegistry:
    """Write the scaling tables and return their registry tests (nothing when CSSI did not run)."""
    cfg = inp.cfg.scaling
    if not (writer.dir / files.CSSI_PARAMS).is_file() or cfg.n_seeds == 0:
        log.info("scaling skipped: it resamples CSSI's random groups (CSSI %s, scaling.n_seeds %d)",
                 "ran" if (writer.dir / files.CSSI_PARAMS).is_file() else "did not run", cfg.n_seeds)
        return StatsRegistry()
    t0 = time.perf_counter()
    with timed(f"scaling ({cfg.n_seeds} seeds, {cfg.n_boot} bootstrap draws, per-TF {cfg.tf_boot})"):
        written, registry = tables(cssi_levels.load_cssi(writer.dir), panel, inp)
        for name, frame in written.items():
            writer.write_table(name, frame)
    writer.mark_done("scaling", key, time.perf_counter() - t0)
    return registry
