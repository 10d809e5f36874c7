"""The plan's measured unit of CSSI's scoring and of the scaling stage (:mod:`analysis.stages.calibration`).

Both score CSSI's grouped sums at each reference's candidate pairs (TFs x co-observed genes; the gene-permuted null
reads every pair), whose number grows with the square of the panel. So both are timed for real, with the run's
cells, references and settings, on panels of a share ``f`` of the genes (evenly spread, TFs and others alike),
stratified as the stage stratifies, over random group sums laid out as the run's grouped store will be
(:func:`~analysis.scoring.cssi_levels.choose_layout` on the whole panel), and extended along the candidate pairs
(:func:`candidate_pairs`) to the whole panel's: ``t = a + b N``, ``a`` the parts that do not grow with the pairs.
The stratification is timed once, on the run's representation: the attention cells' expression, or, for the model's
cell embeddings (which exist only after the extraction), random points of the embedding's width (the cost is the cell
graph's: the same cells, the same width); and the synthetic validation (Supplementary Note 11.1) on one of its seeds,
where the cache does not hold it yet. The probe's group sums hold at most a ninth of the run's grouped store.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..io.expression import expression_matrix
from ..io.stores import GroupedAttention, narrowest_count_dtype
from ..scoring import cssi_levels
from ..scoring.ranking import evaluable_universe
from ..sim.cssi_synthetic import validate
from . import scaling
from .cssi import synthetic_path
from .inputs import Inputs
from .timing import seconds_of

PROBE_SHARES = (1 / 6, 1 / 3)
# CSSI and scaling are timed from this many (reference TF, gene) pairs; below, they take seconds and the probe would
# cost a share of that
CSSI_TIMED_FROM = 200_000


def probe_run(inp: Inputs, share: float, layout: cssi_levels.GroupedLayout, strata, random_group: np.ndarray,
              observed: np.ndarray, seed: int = 0) -> tuple[cssi_levels.CSSIRun, pd.DataFrame]:
    """(a CSSI run over the panel genes at ``share`` of the panel's positions, its panel): random float32 group sums
    shaped as ``layout`` keeps them (every gene's per-head rows, or the TFs', with their columns where kept), counts
    of the co-observed pairs (``observed`` ``[G, G]``), the attention cells' expression, ``strata`` and
    ``random_group`` of the stage."""
    panel, cells = inp.panel, inp.attention_cell_data
    g = len(panel)
    keep = np.unique(np.linspace(0, g - 1, max(2, int(round(share * g)))).round().astype(np.int64))
    sub = panel.iloc[keep].reset_index(drop=True)
    n = keep.size
    sources = (np.arange(n, dtype=np.int64) if layout.sources.size == g
               else np.flatnonzero(sub["is_tf"].to_numpy(dtype=bool)).astype(np.int64))
    n_groups = strata.n_fine + inp.cfg.cssi.n_random_groups
    rng = np.random.default_rng(seed)
    shape = (n_groups, len(layout.layers), inp.adapter.n_heads, sources.size, n)
    per_group = max(cells.n_cells // n_groups, 1)
    counts = np.repeat((observed[np.ix_(keep, keep)] * per_group).astype(narrowest_count_dtype(per_group))[None],
                       n_groups, axis=0)
    grouped = GroupedAttention(sources, rng.random(shape, dtype=np.float32),
                               rng.random(shape, dtype=np.float32) if layout.keep_cols else None,
                               rng.random((n_groups, len(layout.layers), n, n), dtype=np.float32), counts,
                               tuple(layout.layers), sub)
    expression = expression_matrix(cells, sub["gene_id"].to_numpy())
    return cssi_levels.assemble(cells, strata, random_group, grouped, expression, {}), sub


def cssi_rates(inp: Inputs, observed: np.ndarray, cache: Path) -> tuple[float, float | None]:
    """(seconds of the CSSI stage after its grouped extraction: the stratification, every level with its nulls and the
    synthetic validation when ``cache`` lacks it; seconds of the scaling stage, None when it will not run), timed as
    the module doc says. A ValueError when a share of the panel holds no evaluable pair of a reference."""
    c, cells = inp.cfg.cssi, inp.attention_cell_data
    rep = (expression_matrix(cells, inp.panel["gene_id"].to_numpy()) if c.representation == "expression" else
           np.random.default_rng(c.seed).standard_normal((cells.n_cells, inp.adapter.d_model)))
    t0 = time.perf_counter()
    strata, random_group = cssi_levels.build_strata(c, rep, cells.n_cells)
    stratify = time.perf_counter() - t0
    layout = cssi_levels.choose_layout(c, inp.adapter.n_layers, inp.adapter.n_heads, inp.panel, inp.readout_layer,
                                       cells.n_cells)
    with_scaling = inp.cfg.scaling.n_seeds > 0
    levels, scaled, pairs = [], [], []
    for share in PROBE_SHARES:
        run, sub = probe_run(inp, share, layout, strata, random_group, observed)
        levels.append(seconds_of(lambda: cssi_levels.evaluate_grid(run, sub, inp.references, c, progress=False)))
        scaled.append(seconds_of(lambda: scaling.tables(run, sub, inp)) if with_scaling else 0.0)
        pairs.append(candidate_pairs(sub, inp.references, cssi_levels.observed_pairs(run)))
        del run
    whole = candidate_pairs(inp.panel, inp.references, observed)
    synthetic = 0.0
    if c.synthetic_seeds > 0 and not synthetic_path(c.synthetic_seeds, cache).is_file():
        synthetic = c.synthetic_seeds * seconds_of(lambda: validate(1))
    return (stratify + extend(levels, pairs, whole) + synthetic,
            extend(scaled, pairs, whole) if with_scaling else None)


def candidate_pairs(panel: pd.DataFrame, references: list, observed: np.ndarray) -> int:
    """The (TF, gene) candidate pairs of every reference over ``panel`` (co-observed: ``observed`` ``[G, G]``): what
    CSSI's scoring and the scaling stage grow with (a reference TF counts only with a target in the panel, so a share
    ``f`` of the panel holds fewer than ``f^2`` of them)."""
    return sum(int(evaluable_universe(panel, ref, observed).pair_mask.sum()) for ref in references)


def extend(times: list[float], pairs: list[int], whole: int) -> float:
    """Seconds at ``whole`` pairs of the line through (``pairs``, ``times``) at the two shares (its slope at least 0;
    two equal pair counts give the larger time)."""
    (n1, n2), (t1, t2) = pairs, times
    if n2 <= n1:
        return max(t1, t2)
    return t1 + max(t2 - t1, 0.0) / (n2 - n1) * (whole - n1)
