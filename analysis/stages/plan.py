"""What a run will cost, said before it starts (DESIGN.md section 5): per stage, the resident memory it will reach and
the time it will take on this device, plus the total.

Times come from units of each stage's work measured on this device (:mod:`analysis.stages.calibration`): forwards,
the extraction's reduction, ranking calls, SAE steps, layer biology per layer, the confound fits, the ablation's
scoring and the incremental-value models; a stage whose time no measured unit gives (CSSI scoring, scaling, the
edges) says "not estimated". Memory follows from the shapes the stages hold: the pooled store (``layers x heads x
(R + C) x G x 4 + layers x G^2 x 8`` bytes: rows at every source gene, columns at the TFs) while it is extracted,
and afterwards, as later stages read it memory-mapped a block at a time and hand the pages back
(:mod:`analysis.io.mapped`), only each layer's head mean as float64 scores (made a layer at a time), the ranking's
``[heads, TFs, G]`` oriented scores a block of heads at a time, layer biology's ranks of every source over the
co-observed pair universe, the confound fits over the (TF, gene) pairs, the perturbation stage's dense ``[G, G]``
baselines, correlation variants and DE table, one head-mean ``[G^2]`` per ablation sweep item, the DE table its
read-out reads and the unablated pass's hidden states of a batch (its forwards start at each item's first layer; the
heads' ranking is not known yet, so the sweep is planned on a seeded random head order), CSSI's grouped store
(:func:`analysis.scoring.cssi_levels.choose_layout`) and then its group sums at the candidate pairs with the
gene-permuted null's per-stratum ``[K, sites, G^2]`` sums, scaling's layer-mean sums at the candidate pairs, and the
SAE stage's activations on disk as they are read back, its optimiser and one chunk of encoded positions. A stage's
estimate is the resident memory before the run (process, model, cells) plus what it holds; freed memory is handed
back between stages (:func:`analysis.stages.memory.release_free_memory`), so each stage's measured peak is its own.
When an estimate exceeds the memory this process may use (``--memory-limit``; default the smaller of the machine's
memory and its cgroup's limit), the run stops before it writes anything, naming the stage, the estimate and the
setting that brings it down.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from ..config import mlp_block_layers
from ..errors import InputError
from ..interp.ablation import sweep
from ..interp.replay import first_hooked_layer
from ..interp.residual import ENCODE_ROWS
from ..scoring.cssi import SITE_BLOCK_BYTES
from ..scoring.cssi_levels import choose_layout
from ..scoring.ranking import RANK_BLOCK_BYTES, RANK_ELEMENT_BYTES
from .calibration import (CONFOUNDS_TIMED_FROM, INCREMENTAL_PROBE_ROWS, INCREMENTAL_TIMED_FROM, Calibration,
                          observation_count)
from .cssi_probe import CSSI_TIMED_FROM
from .inputs import Inputs
from .sae import capture_cells, knocked_down_tfs

GIB = 2 ** 30
# one (perturbation, gene) row of the DE table as pandas holds it, strings included, about twice over while the
# sensitivity grid recomputes DE (measured: 1,412 perturbations x 2,691 genes took 1.7 GB beyond the rest)
DE_ROW_BYTES = 420
# bytes per (TF, gene) pair the confound stage holds (covariates, scores and labels of the pairs, the fits' design
# matrices, the degree null's permuted labels): fitted, not derived, to the stage's measured peak above the layer
# means at the RPE1 shape (465 TFs x 2,691 genes; 0.97 of plan on scGPT, 1.00 on V2-316M)
CONFOUND_PAIR_BYTES = 320


@dataclass(frozen=True)
class StageEstimate:
    """One stage's estimate: ``memory`` bytes resident at its peak, ``seconds`` (None where no measured unit of the
    stage's work gives its time: :mod:`analysis.stages.calibration`; ``partial`` where it times only part of the
    stage, which ``driver`` names), what drives it, and the setting that brings it down."""

    stage: str
    memory: int
    seconds: float | None
    driver: str
    lever: str
    partial: bool = False


def store_bytes(n_layers: int, n_heads: int, n_panel: int, n_sources: int, n_columns: int, n_full: int) -> int:
    """Bytes of the pooled store (:class:`analysis.io.stores.AttentionStore`) and its device accumulators: every
    head's rows at ``n_sources`` genes and columns at ``n_columns``, the layer means, whole heads and counts."""
    return (n_layers * n_heads * (n_sources + n_columns) * n_panel * 4 + (n_layers + n_full) * n_panel ** 2 * 8
            + n_panel ** 2 * 4)


def estimate(inp: Inputs, cal: Calibration) -> list[StageEstimate]:
    """Every stage the run will execute (module doc)."""
    cfg, adapter = inp.cfg, inp.adapter
    n_layers, n_heads, g = adapter.n_layers, adapter.n_heads, len(inp.panel)
    n_cells, batch = int(inp.attention_cells.size), cfg.extraction.batch_size
    r, n_tf = int(inp.source_rows.size), int(inp.panel["is_tf"].sum())
    pair = g * g * 8
    store = store_bytes(n_layers, n_heads, g, r, inp.n_columns, len(inp.full_heads))
    forward = cal.forward(min(batch, n_cells))
    base = cal.base_bytes
    held = n_layers * pair        # each layer's head-mean scores; the store is mapped and read a block at a time
    per_head = RANK_ELEMENT_BYTES * n_tf * g      # as rank_heads sizes its blocks: scores, ranks, sort order
    ranking_block = min(n_layers * n_heads * per_head, max(RANK_BLOCK_BYTES, per_head))
    ranked = n_layers * n_heads + n_layers + 1              # every head, every layer mean, the Spearman baseline
    n_pairs, n_scored = cal.pair_universe, n_layers + 2      # layer biology: layer means, signed and |rho|
    def replay_bytes(batch_cells: int) -> int:
        """The unmodified pass's hidden states of both inputs of a batch, held for fidelity and replay."""
        return 2 * (n_layers + 1) * batch_cells * cal.length * adapter.d_model * adapter.dtype.itemsize

    rows = [StageEstimate("attention", base + store + forward,
                          cal.seconds * n_cells + store * cal.write_byte_seconds,
                          f"{n_cells} cells x {cal.seconds:.2f} s/cell, then the store written "
                          f"({store * cal.write_byte_seconds:.0f} s); store {store / GIB:.2f} GiB "
                          f"({r} source rows + {inp.n_columns} TF columns x {g} genes x {n_layers * n_heads} heads + "
                          f"{n_layers} layer means); "
                          f"forward {forward / GIB:.2f} GiB at batch {batch}",
                          "extraction.batch_size (forward), extraction.panel_size or fewer source genes (store)"),
            StageEstimate("edges", base + held + 5 * pair, None,
                          f"{n_layers} layer means of [{g}, {g}] float64 filled a layer at a time; Spearman [G, G]",
                          "extraction.panel_size"),
            StageEstimate("ranking", base + held + ranking_block + 3 * pair,
                          3 * cal.ranking_call_seconds + ranked * cal.ranking_source_seconds,
                          f"per-head scores of {n_tf} reference TFs x {g} genes x {n_layers * n_heads} heads, ranked "
                          f"{ranking_block / GIB:.2f} GiB at a time; time: {ranked} sources x "
                          f"{cal.ranking_source_seconds:.2f} s over the references and directions",
                          "extraction.panel_size, or references with fewer TFs"),
            StageEstimate("biology", base + held + pair + (n_scored + 10) * n_pairs * 8,
                          cal.biology_seconds + (n_layers - 1) * cal.biology_layer_seconds,
                          f"ranks of {n_scored} sources over {n_pairs:,} universe gene pairs (float64); time: "
                          f"{cal.biology_seconds:.1f} s with one layer, {cal.biology_layer_seconds:.1f} s per further "
                          "layer",
                          "perturbation.universe_size / extraction.panel_size"),
            StageEstimate("confounds", base + held + 2 * pair + CONFOUND_PAIR_BYTES * n_tf * g,
                          cal.confounds_seconds,
                          f"residualisation and the degree null over {n_tf} TFs x {g} genes; time: "
                          + ("timed with one null draw on shares of the TFs (the real correlation, random "
                             "attention), each further draw on all of them"
                             if cal.confounds_seconds is not None else
                             f"not estimated below {CONFOUNDS_TIMED_FROM:,} pairs"),
                          "references with fewer TFs")]
    if inp.cells.perturbation_col is not None:
        n_perts = len(inp.cells.perturbed_genes())
        de_rows = n_perts * g * DE_ROW_BYTES
        pert = cfg.perturbation          # the sensitivity grid: one condition's DE, Spearman variants and controls
        grid_genes = max([g, *pert.grid_universe_size])
        grid = (n_perts * grid_genes * DE_ROW_BYTES + 4 * grid_genes ** 2 * 8
                + max([0, *pert.grid_n_control]) * grid_genes * 8)
        n_obs = observation_count(inp)
        if cal.incremental_seconds is None:
            seconds, timing = None, (f"time: not estimated below {INCREMENTAL_TIMED_FROM:,} observations "
                                     f"({n_obs:,} here)")
        else:
            seconds = cal.incremental_seconds + (n_obs - INCREMENTAL_PROBE_ROWS[0]) * cal.incremental_row_seconds
            timing = (f"time: the incremental-value models on {n_obs:,} observations (most of the stage; timed on "
                      f"{INCREMENTAL_PROBE_ROWS[0]:,} and {INCREMENTAL_PROBE_ROWS[1]:,})")
        rows.append(StageEstimate("perturbation", base + held + 9 * pair + n_cells * g * 8 * 2 + de_rows + grid,
                                  seconds,
                                  f"dense [G, G] baselines and correlation variants at G = {g}; the DE table of "
                                  f"{n_perts} perturbations x {g} genes ({de_rows / GIB:.2f} GiB); a sensitivity-grid "
                                  f"condition over {grid_genes} genes ({grid / GIB:.2f} GiB); {timing}",
                                  "perturbation.universe_size / extraction.panel_size, perturbation.n_boot"))
    if cfg.ablation.n_cells > 0:
        a = cfg.ablation
        order = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
        order = [order[i] for i in np.random.default_rng(0).permutation(len(order))]   # ranking not known yet
        items = sweep(order, n_layers, readout_layer=inp.readout_layer, ks=a.ks, n_random=a.n_random, seed=a.seed,
                      random_matching=a.random_matching, entropy=np.zeros((n_layers, n_heads)),
                      composite_order=order if inp.cells.perturbation_col is not None else None,
                      whole_layers=a.whole_layers or (inp.readout_layer,),
                      mlp_blocks=[mlp_block_layers(block) for block in a.mlp_blocks])
        cells = min(a.n_cells, n_cells)
        batch_cells = min(a.batch_size, cells)
        firsts = [first_hooked_layer(item.specs, n_layers) for item in items]
        forwards = 2 + 2 * sum(1 - first / n_layers for first in firsts)
        reductions = 1 + sum(first <= inp.readout_layer for first in firsts)   # the read-out layer's attention
        de_held = len(inp.cells.perturbed_genes()) * g * DE_ROW_BYTES // 2 \
            if inp.cells.perturbation_col is not None else 0
        entropy = (n_layers * n_heads * r * g * cal.entropy_element_seconds
                   if "entropy" in a.random_matching else 0.0)
        scoring = (len(items) + 1) * cal.readout_item_seconds
        rows.append(StageEstimate("ablation", base + held + de_held + (len(items) + 2) * pair
                                  + 2 * cal.forward(batch_cells) + replay_bytes(batch_cells),
                                  cells * (forwards * cal.forward_seconds
                                           + reductions * cal.reduce_seconds(n_layers))
                                  + entropy + scoring,
                                  f"{len(items)} sweep items + baseline x {cells} cells: {forwards:.1f} plain "
                                  f"forwards of {cal.forward_seconds:.2f} s per cell (the layers before each item's "
                                  f"first replayed) and {reductions} read-out layer reductions; head entropy "
                                  f"{entropy:.0f} s, read-out scoring at most {scoring:.0f} s; the DE table its "
                                  f"perturbation read-out reads ({de_held / GIB:.2f} GiB)",
                                  "ablation.n_cells, ablation.ks, ablation.n_random"))
    if cfg.cssi.n_fine > 0:
        c = cfg.cssi
        layout = choose_layout(c, n_layers, n_heads, inp.panel, inp.readout_layer, n_cells)
        groups = c.n_fine + c.n_random_groups
        n_pairs = n_tf * g * (2 if layout.keep_cols else 1)
        n_sites = len(layout.layers) * (n_heads + 1)
        permuted_sites = n_sites if layout.sources.size == g else len(layout.layers)   # gene-permuted null's sites
        block = min(groups * n_sites * n_pairs * 4, max(SITE_BLOCK_BYTES, groups * n_pairs * 4))  # a block of sites
        scoring = block + max(c.n_strata) * permuted_sites * g * g * 4 + (permuted_sites + 2) * g * g * 8
        rows.append(StageEstimate("cssi", base + held + max(layout.nbytes + forward, scoring),
                                  n_cells * (cal.forward_seconds
                                             + len(layout.layers) * cal.reduce_seconds(n_layers))
                                  + layout.nbytes * cal.write_byte_seconds + (cal.cssi_seconds or 0.0),
                                  f"{groups} groups: {layout.describe} ({layout.nbytes / GIB:.2f} GiB); scoring "
                                  f"{n_sites} sites at {n_pairs} candidate pairs a block at a time "
                                  f"({scoring / GIB:.2f} GiB); time: the grouped extraction pass over "
                                  f"{len(layout.layers)} layer(s) and its write, " + (
                                      f"the strata, levels and nulls {cal.cssi_seconds:.0f} s (timed on shares of "
                                      "the panel)" if cal.cssi_seconds is not None else
                                      f"(scoring not estimated below {CSSI_TIMED_FROM:,} pairs)"),
                                  "cssi.layers or cssi.max_gib, cssi.n_fine, cssi.n_random_groups "
                                  "(or cssi.n_fine=0 to skip CSSI)", partial=cal.cssi_seconds is None))
    if cfg.cssi.n_fine > 0 and cfg.scaling.n_seeds > 0:
        scaled = groups * (len(layout.layers) * 4 + 8) * n_tf * g + 6 * (len(layout.layers) + 2) * n_tf * g * 8
        rows.append(StageEstimate("scaling", base + held + scaled, cal.scaling_seconds,
                                  f"{groups} groups' layer-mean sums and counts at {n_tf * g} candidate pairs, with "
                                  "the pair scores of the scaled sites; time: "
                                  + ("timed on shares of the panel" if cal.scaling_seconds is not None else
                                     f"not estimated below {CSSI_TIMED_FROM:,} pairs"),
                                  "cssi.n_fine, cssi.n_random_groups, scaling.n_seeds, scaling.n_boot"))
    if cfg.sae.run == "on":
        sae = cfg.sae
        layers = len(sae.layers or range(n_layers))
        features = sae.expansion * adapter.d_model
        genes_per_cell = float((np.asarray(inp.attention_tokens.gene_index) >= 0).sum(axis=1).mean())
        activations = min(n_cells * genes_per_cell * layers * adapter.d_model * 4, sae.max_gib * GIB)
        encoded = ENCODE_ROWS * features * 8 + min(batch, n_cells) * features * 8   # pre-activations, cell sums
        training = 4 * 2 * features * adapter.d_model * 4                # weights, gradients, Adam's two moments
        edited = min(sae.specificity_cells, cfg.ablation.n_cells, n_cells, cfg.ablation.batch_size)
        steps = sae.epochs * int(np.ceil(activations / (adapter.d_model * 4) / sae.batch_size))
        forwards = sae_forwards(inp, layers, genes_per_cell)
        rows.append(StageEstimate("sae", base + held + max(forward + activations + training + replay_bytes(edited),
                                                           forward + encoded),
                                  forwards * cal.forward_seconds + layers * steps * cal.sae_step_seconds,
                                  f"residual stream of {layers} layer(s) captured to disk "
                                  f"({activations / GIB:.2f} GiB, read back while training), one {features}-feature "
                                  f"SAE per layer; the regulatory test encodes {ENCODE_ROWS} positions at a time "
                                  f"({encoded / GIB:.2f} GiB); time: {forwards} plain forwards (capture, behaviour, "
                                  f"feature edits, knock-down cells) and {layers} x {steps} training steps of "
                                  f"{cal.sae_step_seconds:.2f} s",
                                  "sae.layers, sae.max_gib, extraction.batch_size, sae.run=off"))
    return rows


def sae_forwards(inp: Inputs, n_sae_layers: int, genes_per_cell: float) -> int:
    """Cell forwards the SAE stage runs (:mod:`analysis.stages.sae`): the captured cells once; per layer, two per
    behaviour cell (unchanged and spliced); per layer but the last, two plus two per edited feature on each
    specificity cell; and one per regulatory-test cell: up to ``sae.regulatory_cells`` controls and as many of each
    knocked-down TF that the test keeps (:func:`~analysis.stages.sae.knocked_down_tfs`, over the genes of the captured
    cells' tokens)."""
    cfg, sae, n_layers = inp.cfg, inp.cfg.sae, inp.adapter.n_layers
    n_cells = int(inp.attention_cells.size)
    layers = sae.layers or tuple(range(n_layers))
    captured = capture_cells(n_cells, genes_per_cell, n_sae_layers, inp.adapter.d_model, sae.max_gib, sae.seed)
    behaviour = min(max(cfg.ablation.n_cells, 1), n_cells)
    edited = sum(layer != n_layers - 1 for layer in layers) * min(sae.specificity_cells, behaviour) * \
        (2 + 2 * sae.specificity_features)
    genes = np.asarray(inp.attention_tokens.gene_index)[captured]
    genes_in = np.bincount(genes[genes >= 0], minlength=len(inp.attention_tokens.genes)) > 0
    tfs = knocked_down_tfs(inp, genes_in)
    knockdown = 0
    if tfs:
        labels = inp.cells.obs[inp.cells.perturbation_col].astype(str).value_counts()
        knockdown = sum(min(sae.regulatory_cells, int(labels.get(label, 0)))
                        for label in [inp.cells.control_label, *tfs])
    return captured.size + 2 * n_sae_layers * behaviour + edited + knockdown


def largest_fitting_batch(inp: Inputs, cal: Calibration, limit: int) -> int | None:
    """The largest ``extraction.batch_size`` below the run's whose every stage estimate fits in ``limit`` bytes
    (the batch moves the forward's memory only); None when none does."""
    batch = inp.cfg.extraction.batch_size
    for smaller in range(batch - 1, 0, -1):
        cfg = replace(inp.cfg, extraction=replace(inp.cfg.extraction, batch_size=smaller))
        if all(row.memory <= limit for row in estimate(replace(inp, cfg=cfg), cal)):
            return smaller
    return None


def check(plan: list[StageEstimate], limit: int, fitting_batch: int | None = None) -> None:
    """An InputError naming the first stage whose estimate exceeds ``limit`` bytes, and what brings it down
    (``fitting_batch``: :func:`largest_fitting_batch`, named when a smaller batch is enough)."""
    for row in plan:
        if row.memory > limit:
            hint = (f" (extraction.batch_size={fitting_batch} fits)" if fitting_batch is not None
                    and "extraction.batch_size" in row.lever else "")
            raise InputError(f"the {row.stage} stage would need about {row.memory / GIB:.1f} GiB, more than the "
                             f"{limit / GIB:.1f} GiB this process may use ({row.driver}); lower {row.lever}{hint}, "
                             "or raise --memory-limit if more memory is really there. Nothing was written.")


def describe(plan: list[StageEstimate], limit: int, cal: Calibration) -> str:
    """The plan as the log and ``--plan`` print it."""
    ratio = f" ({cal.seconds / cal.forward_seconds:.2f}x a plain forward's {cal.forward_seconds:.2f} s)" \
        if cal.forward_seconds > 0 else ""
    written = f"the cache's disk writes {1 / cal.write_byte_seconds / 2 ** 20:.0f} MiB/s; " \
        if cal.write_byte_seconds > 0 else ""
    lines = [f"plan (calibrated on {cal.length}-token cells: extraction {cal.seconds:.2f} s per cell{ratio}, forward "
             f"{cal.forward_bytes / GIB:.2f} GiB + {cal.per_cell_bytes / GIB:.2f} GiB per further cell of a batch; "
             f"{written}memory limit {limit / GIB:.1f} GiB):"]
    for row in plan:
        when = (f"{row.seconds / 60:7.1f} min{' and more' if row.partial else ''}" if row.seconds is not None
                else "  (not estimated)")
        lines.append(f"  {row.stage:<16} {row.memory / GIB:6.2f} GiB {when}  {row.driver}")
    total = sum(row.seconds or 0.0 for row in plan)
    lines.append(f"  {'total':<16} {max(r.memory for r in plan) / GIB:6.2f} GiB {total / 60:7.1f} min  "
                 "(peak, and the sum of the estimated times; the stages not estimated add to it)")
    return "\n".join(lines)


def record(plan: list[StageEstimate], limit: int, cal: Calibration) -> dict:
    """The plan as the manifest keeps it, next to the measured stage timings."""
    return {"memory_limit": limit, "calibration": asdict(cal), "stages": [asdict(row) for row in plan]}
