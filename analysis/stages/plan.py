"""What a run will cost, said before it starts (DESIGN.md section 5): per stage, the resident memory it will reach and,
for the stages that run the model, the time it will take on this device, plus the total.

The model's own cost is measured, not modelled: the longest of the attention cells, then the two longest as one
batch, go through the real extraction (:func:`analysis.interp.attention.extract_attention`, with the run's panel and
source genes), which gives the seconds per cell and the resident memory of a forward with its reduction, as a fixed
part and a part per cell of a batch; the ranking's cost is timed on one and two sources of random scores over the
run's panel and references (:func:`ranking_rate`), an SAE step on random activations (:func:`sae_step_seconds`).
Everything else follows from the shapes the stages hold: the pooled store (``layers x heads x (R + C) x G x 4 +
layers x G^2 x 8`` bytes: rows at every source gene, columns at the TFs) while it is extracted, and afterwards, as
later stages read it memory-mapped a block at a time and hand the pages back (:mod:`analysis.io.mapped`), only each
layer's head mean as float64 scores, the ranking's ``[heads, TFs, G]`` oriented scores a block of heads at a time,
the perturbation stage's dense ``[G, G]`` baselines, correlation variants and DE table, one head-mean ``[G^2]`` per
ablation sweep item and the unablated pass's hidden states of a batch (its forwards start at each item's first layer;
the heads' ranking is not known yet, so the sweep is planned on a seeded random head order), CSSI's grouped store
(:func:`analysis.scoring.cssi_levels.choose_layout`) and then its group sums at the candidate pairs with the gene-
permuted null's per-stratum ``[K, sites, G^2]`` sums, scaling's layer-mean sums at the candidate pairs, and the SAE
stage's activations on disk as they are read back, its optimiser and one chunk of encoded positions. A stage's
estimate is the resident memory before the run (process, model, cells) plus what it holds; freed memory is handed
back between stages (:func:`release_free_memory`), so each stage's measured peak is its own. When an estimate exceeds
the memory this process may use (``--memory-limit``; default the smaller of the machine's memory and its cgroup's
limit), the run stops before it writes anything, naming the stage, the estimate and the setting that brings it down.
"""
from __future__ import annotations

import ctypes
import gc
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from ..config import mlp_block_layers
from ..errors import InputError
from ..interp.ablation import sweep
from ..interp.attention import extract_attention
from ..interp.replay import first_hooked_layer
from ..interp.sae import train_sae
from ..interp.residual import ENCODE_ROWS
from ..io import mapped
from ..scoring.cssi import SITE_BLOCK_BYTES
from ..scoring.cssi_levels import choose_layout
from ..scoring.edges import EdgeScores
from ..scoring.ranking import RANK_BLOCK_BYTES, rank_heads
from .inputs import Inputs

GIB = 2 ** 30
# one (perturbation, gene) row of the DE table as pandas holds it, strings included, about twice over while the
# sensitivity grid recomputes DE (measured: 1,412 perturbations x 2,691 genes took 1.7 GB beyond the rest)
DE_ROW_BYTES = 420


@dataclass(frozen=True)
class StageEstimate:
    """One stage's estimate: ``memory`` bytes resident at its peak, ``seconds`` (None where the stage's time does not
    follow from a forward pass and is not estimated), what drives it, and the setting that brings it down."""

    stage: str
    memory: int
    seconds: float | None
    driver: str
    lever: str


def release_free_memory() -> None:
    """Hand the memory this process freed back to the system: collect garbage, ask glibc's allocator to return its
    free pages (``malloc_trim``; arrays under its 32 MB mmap threshold live in the heap, whose freed pages it
    otherwise keeps), and drop the pages read from memory-mapped stores (:func:`analysis.io.mapped.release_all`).
    Between stages, so one stage's temporaries and reads do not stay resident under the next."""
    gc.collect()
    mapped.release_all()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):      # not glibc: nothing to ask
        pass


class PeakRSS:
    """The largest resident set size of this process while the block runs, sampled every ``interval`` seconds in a
    thread (``peak`` in bytes, after the block; :meth:`take` returns it, releases freed memory
    (:func:`release_free_memory`) and starts a new window, so one sampler gives each stage its own peak)."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._process = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def take(self) -> int:
        """The peak since the last call (or the start), then a new window from the current resident size."""
        peak = max(self.peak, self._process.memory_info().rss)
        release_free_memory()
        self.peak = self._process.memory_info().rss
        return peak

    def __enter__(self) -> "PeakRSS":
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def memory_limit() -> int:
    """Bytes this process may use: the machine's memory, or its cgroup's limit when that is lower (cgroup v2
    ``memory.max``, v1 ``memory.limit_in_bytes``)."""
    limit = psutil.virtual_memory().total
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = min(limit, int(text))
    return limit


@dataclass(frozen=True)
class Calibration:
    """The real extraction on the longest cell, then on the two longest as one batch: ``seconds`` per cell (from
    the batch of two), ``forward_bytes`` resident above the store for one cell's forward and reduction,
    ``per_cell_bytes`` what each further cell of a batch adds (the difference of the two; a forward's fixed part,
    e.g. the reduction's chunk buffers, does not grow with the batch), ``base_bytes`` resident before it (process,
    model, cells), ``length`` the longest cell's tokens. ``ranking_call_seconds`` and ``ranking_source_seconds``:
    one ranking call's fixed cost and its cost per ranked source, summed over the run's references and directions
    (:func:`ranking_rate`); ``sae_step_seconds``: one SAE optimiser step (:func:`sae_step_seconds`; 0 without SAEs).
    """

    seconds: float
    forward_bytes: int
    per_cell_bytes: int
    base_bytes: int
    length: int
    ranking_call_seconds: float = 0.0
    ranking_source_seconds: float = 0.0
    sae_step_seconds: float = 0.0

    def forward(self, cells: int) -> int:
        """Bytes of a forward and reduction over a batch of ``cells`` cells."""
        return self.forward_bytes + max(cells - 1, 0) * self.per_cell_bytes


def _measure(inp: Inputs, cells: np.ndarray) -> tuple[float, int, int]:
    """(seconds, resident bytes above the store, resident bytes before) of extracting ``cells`` as one batch."""
    release_free_memory()
    batch = inp.attention_tokens.subset(cells)
    base = psutil.Process().memory_info().rss
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        store = extract_attention(inp.adapter, batch, inp.panel, sources=inp.source_rows, n_columns=inp.n_columns,
                                  full_heads=inp.full_heads, batch_size=cells.size, progress=False)
        seconds = time.perf_counter() - t0
    return seconds, max(peak.peak - base - store.nbytes(), 0), base


def calibrate(inp: Inputs) -> Calibration:
    """Run the longest attention cell, then the two longest as one batch, through :func:`extract_attention` with the
    run's panel and sources (module doc). The store each builds is subtracted from its measured peak, so the bytes
    are the forward's share."""
    tokens = inp.attention_tokens
    longest = np.argsort(-np.asarray(tokens.attention_mask).sum(axis=1), kind="stable")[:2]
    seconds, one, base = _measure(inp, longest[:1])
    per_cell = one
    if longest.size == 2:
        two_seconds, two, _ = _measure(inp, longest)
        seconds, per_cell = two_seconds / 2, max(two - one, 0)
    call, per_source = ranking_rate(inp)
    step = sae_step_seconds(inp) if inp.cfg.sae.run == "on" else 0.0
    return Calibration(seconds, one, per_cell, base, int(np.asarray(tokens.attention_mask)[longest[0]].sum()),
                       call, per_source, step)


def _timed(work) -> float:
    t0 = time.perf_counter()
    work()
    return time.perf_counter() - t0


def ranking_rate(inp: Inputs) -> tuple[float, float]:
    """(seconds of one :func:`~analysis.scoring.ranking.rank_heads` call's fixed part, seconds per ranked source),
    each summed over the run's references and ranking directions: ``rank_heads`` timed for real on one and on two
    sources of random scores over the run's panel, against each reference, with the run's null size and top-k (the
    difference is a source's cost; ranking time does not depend on the scores' values)."""
    cfg, g = inp.cfg.ranking, len(inp.panel)
    rng = np.random.default_rng(0)
    observed = np.ones((g, g), dtype=bool)
    probes = [EdgeScores(rng.random((n, g, g)), pd.DataFrame({"edge_type": "attention", "layer": 0,
                                                                 "head": np.arange(n)}), observed, inp.panel, {})
              for n in (1, 2)]
    call = per_source = 0.0
    for ref in inp.references:
        for direction in cfg.directions:
            try:
                one, two = (_timed(lambda e=e: rank_heads(e, ref, direction=direction, top_k=cfg.top_k,
                                                          n_null=cfg.n_null, seed=cfg.seed)) for e in probes)
            except ValueError:                 # a reference with nothing to evaluate here: the stage skips it too
                continue
            per_source += max(two - one, 0.0)
            call += max(one - max(two - one, 0.0), 0.0)
    return call, per_source


def sae_step_seconds(inp: Inputs, steps: int = 3) -> float:
    """Seconds of one SAE optimiser step at the run's shape (``d_model`` in, ``expansion x d_model`` features, the
    configured batch), timed for real over ``steps`` steps of :func:`~analysis.interp.sae.train_sae` on random
    activations (its evaluation pass included, as each layer's training has one)."""
    sae, d = inp.cfg.sae, inp.adapter.d_model
    rows = np.random.default_rng(0).standard_normal((steps * sae.batch_size, d)).astype(np.float32)
    batches = [rows[i:i + sae.batch_size] for i in range(0, rows.shape[0], sae.batch_size)]
    seconds = _timed(lambda: train_sae(lambda: iter(batches), d, n_features=sae.expansion * d, k=sae.k, epochs=1,
                                       lr=sae.lr, seed=sae.seed, device=inp.adapter.device))
    return seconds / steps


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
    per_head = 64 * n_tf * g              # as rank_heads sizes its blocks: scores, ranks, sort order, temporaries
    ranking_block = min(n_layers * n_heads * per_head, max(RANK_BLOCK_BYTES, per_head))
    edges = 3 * held + 3 * pair       # the layer sums read, their scores and a temporary; the Spearman matrices
    ranked = n_layers * n_heads + n_layers + 1              # every head, every layer mean, the Spearman baseline
    def replay_bytes(batch_cells: int) -> int:
        """The unmodified pass's hidden states of both inputs of a batch, held for fidelity and replay."""
        return 2 * (n_layers + 1) * batch_cells * cal.length * adapter.d_model * adapter.dtype.itemsize

    rows = [StageEstimate("attention", base + store + forward, cal.seconds * n_cells,
                          f"{n_cells} cells x {cal.seconds:.2f} s/cell; store {store / GIB:.2f} GiB "
                          f"({r} source rows + {inp.n_columns} TF columns x {g} genes x {n_layers * n_heads} heads + "
                          f"{n_layers} layer means); "
                          f"forward {forward / GIB:.2f} GiB at batch {batch}",
                          "extraction.batch_size (forward), extraction.panel_size or fewer source genes (store)"),
            StageEstimate("edges + ranking", base + max(edges, held + ranking_block + 3 * pair),
                          3 * cal.ranking_call_seconds + ranked * cal.ranking_source_seconds,
                          f"per-head scores of {n_tf} reference TFs x {g} genes x {n_layers * n_heads} heads, ranked "
                          f"{ranking_block / GIB:.2f} GiB at a time; time: {ranked} sources x "
                          f"{cal.ranking_source_seconds:.2f} s over the references and directions",
                          "extraction.panel_size, or references with fewer TFs")]
    if inp.cells.perturbation_col is not None:
        n_perts = len(inp.cells.perturbed_genes())
        de_rows = n_perts * g * DE_ROW_BYTES
        rows.append(StageEstimate("perturbation", base + held + 9 * pair + n_cells * g * 8 * 2 + de_rows, None,
                                  f"dense [G, G] baselines and correlation variants at G = {g}; the DE table of "
                                  f"{n_perts} perturbations x {g} genes ({de_rows / GIB:.2f} GiB)",
                                  "perturbation.universe_size / extraction.panel_size"))
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
        forwards = 2 + 2 * sum(1 - first_hooked_layer(item.specs, n_layers) / n_layers for item in items)
        rows.append(StageEstimate("ablation", base + held + (len(items) + 2) * pair
                                  + 2 * cal.forward(batch_cells) + replay_bytes(batch_cells),
                                  cal.seconds * cells * forwards,
                                  f"{len(items)} sweep items + baseline x {cells} cells: {forwards:.1f} full "
                                  "forwards per cell, the layers before each item's first replayed",
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
        rows.append(StageEstimate("cssi", base + held + max(layout.nbytes + forward, scoring), cal.seconds * n_cells,
                                  f"{groups} groups: {layout.describe} ({layout.nbytes / GIB:.2f} GiB); scoring "
                                  f"{n_sites} sites at {n_pairs} candidate pairs a block at a time "
                                  f"({scoring / GIB:.2f} GiB); time: the extraction pass (scoring not estimated)",
                                  "cssi.layers or cssi.max_gib, cssi.n_fine, cssi.n_random_groups "
                                  "(or cssi.n_fine=0 to skip CSSI)"))
    if cfg.cssi.n_fine > 0 and cfg.scaling.n_seeds > 0:
        scaled = groups * (len(layout.layers) * 4 + 8) * n_tf * g + 6 * (len(layout.layers) + 2) * n_tf * g * 8
        rows.append(StageEstimate("scaling", base + held + scaled, None,
                                  f"{groups} groups' layer-mean sums and counts at {n_tf * g} candidate pairs, with "
                                  "the pair scores of the scaled sites", "cssi.n_fine, cssi.n_random_groups"))
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
        rows.append(StageEstimate("sae", base + held + max(forward + activations + training + replay_bytes(edited),
                                                           forward + encoded),
                                  cal.seconds * n_cells + layers * steps * cal.sae_step_seconds,
                                  f"residual stream of {layers} layer(s) captured to disk "
                                  f"({activations / GIB:.2f} GiB, read back while training), one {features}-feature "
                                  f"SAE per layer; the regulatory test encodes {ENCODE_ROWS} positions at a time "
                                  f"({encoded / GIB:.2f} GiB); time: the capture pass and {layers} x {steps} "
                                  f"training steps of {cal.sae_step_seconds:.2f} s (read-outs not estimated)",
                                  "sae.layers, sae.max_gib, extraction.batch_size, sae.run=off"))
    return rows


def check(plan: list[StageEstimate], limit: int) -> None:
    """An InputError naming the first stage whose estimate exceeds ``limit`` bytes, and what brings it down."""
    for row in plan:
        if row.memory > limit:
            raise InputError(f"the {row.stage} stage would need about {row.memory / GIB:.1f} GiB, more than the "
                             f"{limit / GIB:.1f} GiB this process may use ({row.driver}); lower {row.lever}, or "
                             "raise --memory-limit if more memory is really there. Nothing was written.")


def describe(plan: list[StageEstimate], limit: int, cal: Calibration) -> str:
    """The plan as the log and ``--plan`` print it."""
    lines = [f"plan (calibrated on {cal.length}-token cells: {cal.seconds:.2f} s per cell, forward "
             f"{cal.forward_bytes / GIB:.2f} GiB + {cal.per_cell_bytes / GIB:.2f} GiB per further cell of a batch; "
             f"memory limit {limit / GIB:.1f} GiB):"]
    for row in plan:
        when = f"{row.seconds / 60:7.1f} min" if row.seconds is not None else "  (not estimated)"
        lines.append(f"  {row.stage:<16} {row.memory / GIB:6.2f} GiB {when}  {row.driver}")
    total = sum(row.seconds or 0.0 for row in plan)
    lines.append(f"  {'forward stages':<16} {max(r.memory for r in plan) / GIB:6.2f} GiB {total / 60:7.1f} min  "
                 "(peak, and the sum of the estimated times)")
    return "\n".join(lines)


def record(plan: list[StageEstimate], limit: int, cal: Calibration) -> dict:
    """The plan as the manifest keeps it, next to the measured stage timings."""
    return {"memory_limit": limit, "calibration": asdict(cal), "stages": [asdict(row) for row in plan]}
