"""The CSSI stage (paper sections 2.2 and 4.2, Supplementary Note 11), resumable: strata from the model's cell
embeddings (or expression), one grouped extraction pass over fine clusters and random groups, every level of the
grid scored with its nulls (:mod:`analysis.scoring.cssi_levels`), the synthetic validation, and the registry tests."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import stable_hash
from ..interp.attention import extract_grouped_attention
from ..io import files, schemas
from ..io.artifacts import RunWriter
from ..io.locks import exclusive
from ..io.expression import expression_matrix
from ..io.stores import AttentionStore
from ..scoring import cssi_levels
from ..scoring.registry import StatsRegistry
from ..sim.cssi_synthetic import PAPER, validate
from .inputs import Inputs
from .timing import timed

log = logging.getLogger("precompute")


def prepare(inp: Inputs, store: AttentionStore, progress: bool = True) -> cssi_levels.CSSIRun:
    """Strata and the grouped extraction pass (the costly part; one forward pass over the cells for the chosen
    layers into the grouped store that :func:`analysis.scoring.cssi_levels.choose_layout` picks)."""
    c, adapter, panel = inp.cfg.cssi, inp.adapter, store.panel
    cells, tokens = inp.attention_cell_data, inp.attention_tokens   # the pooled store's cells
    expression = expression_matrix(cells, panel["gene_id"].to_numpy())
    rep = cssi_levels.representation(c, store.cell_embeddings, expression, adapter.native_embedding)
    strata, random_group = cssi_levels.build_strata(c, rep, cells.n_cells)
    layout = cssi_levels.choose_layout(c, adapter.n_layers, adapter.n_heads, panel, inp.readout_layer,
                                       cells.n_cells)
    log.info("CSSI: %d fine clusters + %d random groups, %s: %.2f GiB of group sums", strata.n_fine,
             c.n_random_groups, layout.describe, layout.nbytes / 2 ** 30)
    grouped = extract_grouped_attention(adapter, tokens, panel, np.stack([strata.fine, random_group], axis=1),
                                        strata.n_fine + c.n_random_groups, layers=layout.layers,
                                        sources=layout.sources, keep_cols=layout.keep_cols,
                                        batch_size=inp.cfg.extraction.batch_size, progress=progress)
    kind = cssi_levels.embedding_kind(c, adapter.native_embedding) if c.representation == "embedding" else None
    params = {"layers": list(layout.layers), "n_fine": strata.n_fine, "n_random_groups": c.n_random_groups,
              "representation": c.representation, "cell_embedding": kind, "strata": strata.params,
              "layout": "first two principal components of the representation",
              "per_head_rows": "every gene" if grouped.full_rows else f"{grouped.source_rows.size} reference TFs",
              "gene_permuted_null": ("every site" if grouped.full_rows else
                                     "layer means and correlations (heads kept at the reference TFs only)")}
    return cssi_levels.assemble(cells, strata, random_group, grouped, expression, params)


def synthetic_path(seeds: int, cache: Path) -> Path:
    """Where a cache keeps the synthetic validation of ``seeds`` seeds (:func:`synthetic_validation`)."""
    return Path(cache) / "shared" / f"cssi_synthetic-{seeds}-{stable_hash(PAPER)[:10]}.parquet"


def synthetic_validation(seeds: int, cache: Path) -> pd.DataFrame:
    """Supplementary Note 11.1's synthetic validation: it depends on nothing of the run but ``seeds``, so it is
    computed once per cache (``cache/shared``) and read by every later run, under a lock so that the runs of one
    precompute (the embedded default's two, side by side) compute it once between them."""
    path = synthetic_path(seeds, cache)
    with exclusive(cache, path.stem, "the CSSI synthetic validation"):
        if path.is_file():
            return schemas.validate("cssi_synthetic", pd.read_parquet(path))
        table = schemas.validate("cssi_synthetic", validate(seeds))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".partial-{os.getpid()}")
        table.to_parquet(partial, index=False)
        os.replace(partial, path)
    return table


def run(inp: Inputs, store: AttentionStore, writer: RunWriter, run_key: str, progress: bool) -> StatsRegistry:
    """Run (or reload) CSSI and return its registry tests."""
    cfg = inp.cfg.cssi
    key = stable_hash({"run": run_key, "stage": "cssi"})
    t0 = time.perf_counter()
    synthetic_file = writer.dir / files.table("cssi_synthetic")
    if writer.is_done("cssi", key):
        curve = schemas.validate("cssi_curve", pd.read_parquet(writer.dir / files.table("cssi_curve")))
        synthetic = pd.read_parquet(synthetic_file) if synthetic_file.is_file() else None
        writer.mark_done("cssi", key, 0.0, skipped=True)
    else:
        with timed(f"CSSI strata + grouped attention ({cfg.representation})"):
            try:
                cssi_run = prepare(inp, store, progress=progress)
            except cssi_levels.TooFewStrata as exc:   # the rest of the run stands; say what was skipped
                log.warning("CSSI skipped: %s", exc)
                return StatsRegistry()
            cssi_levels.save(cssi_run, writer.dir)
            cssi_run = cssi_levels.load_cssi(writer.dir)   # memory-mapped: the accumulators are released
        with timed(f"CSSI levels ({cfg.n_null} random strata, {cfg.n_gene_null} gene permutations)"):
            curve, null = cssi_levels.evaluate_grid(cssi_run, store.panel, inp.references, cfg, progress=progress)
            writer.write_table("cssi_curve", curve)
            writer.write_table("cssi_null", null)
        synthetic = None
        if cfg.synthetic_seeds > 0:
            with timed(f"CSSI synthetic validation ({cfg.synthetic_seeds} seeds)"):
                synthetic = synthetic_validation(cfg.synthetic_seeds, writer.final.parent.parent)
                synthetic.to_parquet(synthetic_file, index=False)
        writer.mark_done("cssi", key, time.perf_counter() - t0)
    registry = cssi_levels.cssi_tests(curve, primary_n_strata=cfg.primary_n_strata, readout_layer=inp.readout_layer,
                                      metric=cfg.confirmatory_metric)
    if synthetic is not None:
        registry.extend(cssi_levels.synthetic_tests(synthetic))
    return registry
