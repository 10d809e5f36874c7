"""What the plan measures before a run (:mod:`analysis.stages.plan`): each stage's unit of work, timed for real on
this device at the run's shapes, never modelled.

The longest of the attention cells, then the two longest as one batch, go through the real extraction
(:func:`analysis.interp.attention.extract_attention`, with the run's panel and source genes): seconds per cell and
the resident memory of a forward with its reduction, as a fixed part and a part per cell of a batch; the longest cell
through a plain forward (hidden states, no reduction: an ablation pass; the ratio of the two is the extraction's
overhead). The co-observed gene pairs are counted from the tokens. Then, on random scores at the run's panel,
co-observed pairs, references and settings: the ranking on one and two sources (:func:`ranking_rate`), an SAE step
(:func:`sae_step_seconds`), layer biology on one and two layers (:func:`biology_rate`), the reference confounds on
shares of the TFs with the real correlation, and their degree-null draws on all of them (:func:`confounds_rate`), the
ablation's head entropy and read-out scoring
(:func:`ablation_scoring_rate`), for a large screen, the incremental-value models on random observation tables
(:func:`incremental_rate`), the disk's write rate (:func:`write_rate`), and for a large panel CSSI's scoring and the
scaling stage on shares of the panel (:mod:`.cssi_probe`).
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from ..interp.attention import count_pairs, extract_attention
from ..interp.sae import train_sae
from ..scoring import biology
from ..scoring.confounds import GENE_FEATURES, degree_null, incremental_value
from ..scoring.cssi_levels import TooFewStrata
from ..scoring.edges import CORRELATION_EDGE_TYPES, EdgeScores, spearman_edges
from ..scoring.heads import attention_entropy
from ..scoring.perturbation import readout_auroc
from ..scoring.ranking import evaluable_universe, rank_heads
from .confounds import run as reference_confounds
from .cssi_probe import CSSI_TIMED_FROM, cssi_rates
from .inputs import Inputs
from .memory import PeakRSS, release_free_memory
from .timing import seconds_of

# the incremental-value models are timed on random observation tables of these sizes, when the run has at least
# INCREMENTAL_TIMED_FROM observations (the probe takes about half a minute: below that it would cost about as much as
# the stage)
INCREMENTAL_PROBE_ROWS = (20_000, 40_000)
INCREMENTAL_TIMED_FROM = 800_000
# the reference confounds are timed (on shares of the TFs) from this many (TF, gene) pairs; below, the stage takes
# seconds and its fits' fixed cost would make the probe as long as the stage
CONFOUNDS_TIMED_FROM = 200_000
# at most this many bytes (the store's size, when smaller) are written to time the disk under the cache (the attention
# and CSSI stores are written once each)
WRITE_PROBE_BYTES = 256 * 2 ** 20


@dataclass(frozen=True)
class Calibration:
    """The real extraction on the longest cell, then on the two longest as one batch: ``seconds`` per cell (from
    the batch of two), ``forward_bytes`` resident above the store for one cell's forward and reduction,
    ``per_cell_bytes`` what each further cell of a batch adds (the difference of the two; a forward's fixed part,
    e.g. the reduction's chunk buffers, does not grow with the batch), ``base_bytes`` resident before it (process,
    model, cells), ``length`` the longest cell's tokens. ``ranking_call_seconds`` and ``ranking_source_seconds``:
    one ranking call's fixed cost and its cost per ranked source, summed over the run's references and directions
    (:func:`ranking_rate`); ``sae_step_seconds``: one SAE optimiser step (:func:`sae_step_seconds`; 0 without SAEs);
    ``forward_seconds``: a plain forward of the longest cell (hidden states, no attention reduction: what an ablation
    pass costs); ``pair_universe``: the universe gene pairs co-observed in the attention cells (layer biology's
    pairs, counted from the tokens); ``biology_seconds`` and ``biology_layer_seconds``: layer biology on one layer of
    random scores over those pairs and the run's references, and what each further layer adds
    (:func:`biology_rate`); ``incremental_seconds`` and ``incremental_row_seconds``: the incremental-value fits and
    bootstrap at :data:`INCREMENTAL_PROBE_ROWS` observations and per further observation (:func:`incremental_rate`;
    None below :data:`INCREMENTAL_TIMED_FROM` observations, where the probe would cost as much as the stage);
    ``entropy_element_seconds`` and ``readout_item_seconds``: the ablation's head entropy per stored score and its
    scoring of one sweep item's read-out (:func:`ablation_scoring_rate`); ``confounds_seconds``: the reference-side
    confound stage (:func:`confounds_rate`; None below :data:`CONFOUNDS_TIMED_FROM` pairs); ``write_byte_seconds``:
    seconds per byte written under the cache (:func:`write_rate`: the stores' writes); ``cssi_seconds`` and
    ``scaling_seconds``: CSSI after its grouped extraction, and the scaling stage (:mod:`.cssi_probe`; None below
    :data:`~.cssi_probe.CSSI_TIMED_FROM` pairs or without CSSI).
    """

    seconds: float
    forward_bytes: int
    per_cell_bytes: int
    base_bytes: int
    length: int
    ranking_call_seconds: float = 0.0
    ranking_source_seconds: float = 0.0
    sae_step_seconds: float = 0.0
    forward_seconds: float = 0.0
    pair_universe: int = 0
    biology_seconds: float = 0.0
    biology_layer_seconds: float = 0.0
    incremental_seconds: float | None = None
    incremental_row_seconds: float = 0.0
    entropy_element_seconds: float = 0.0
    readout_item_seconds: float = 0.0
    confounds_seconds: float | None = None
    write_byte_seconds: float = 0.0
    cssi_seconds: float | None = None
    scaling_seconds: float | None = None

    def forward(self, cells: int) -> int:
        """Bytes of a forward and reduction over a batch of ``cells`` cells."""
        return self.forward_bytes + max(cells - 1, 0) * self.per_cell_bytes

    def reduce_seconds(self, n_layers: int) -> float:
        """Seconds per cell of one layer's attention reduction: the extraction over a plain forward, per layer."""
        return max(self.seconds - self.forward_seconds, 0.0) / n_layers


def _measure(inp: Inputs, cells: np.ndarray) -> tuple[float, int, int, int]:
    """(seconds, resident bytes above the store, resident bytes before, the store's bytes) of extracting ``cells`` as
    one batch."""
    release_free_memory()
    batch = inp.attention_tokens.subset(cells)
    base = psutil.Process().memory_info().rss
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        store = extract_attention(inp.adapter, batch, inp.panel, sources=inp.source_rows, n_columns=inp.n_columns,
                                  full_heads=inp.full_heads, batch_size=cells.size, progress=False)
        seconds = time.perf_counter() - t0
    return seconds, max(peak.peak - base - store.nbytes(), 0), base, store.nbytes()


def calibrate(inp: Inputs, cache: Path) -> Calibration:
    """Run the longest attention cell, then the two longest as one batch, through :func:`extract_attention` with the
    run's panel and sources (the store each builds is subtracted from its measured peak, so the bytes are the
    forward's share), then the longest through a plain forward, and every probe of the module doc (the disk's write
    rate under ``cache``)."""
    tokens = inp.attention_tokens
    longest = np.argsort(-np.asarray(tokens.attention_mask).sum(axis=1), kind="stable")[:2]
    seconds, one, base, store_bytes = _measure(inp, longest[:1])
    per_cell = one
    if longest.size == 2:
        two_seconds, two, _, _ = _measure(inp, longest)
        seconds, per_cell = two_seconds / 2, max(two - one, 0)
    observed = co_observed(inp)
    call, per_source = ranking_rate(inp, observed)
    step = sae_step_seconds(inp) if inp.cfg.sae.run == "on" else 0.0
    plain = seconds_of(lambda: inp.adapter.forward(tokens.subset(longest[:1]), output_hidden_states=True, decode=False))
    universe = np.flatnonzero(inp.panel["in_universe"].to_numpy(dtype=bool))
    pairs = int(np.triu(observed[np.ix_(universe, universe)], k=1).sum())
    incremental, per_row = (incremental_rate(inp) if observation_count(inp) >= INCREMENTAL_TIMED_FROM
                            else (None, 0.0))
    biology_one, biology_layer = biology_rate(inp, observed)
    entropy, readout = ablation_scoring_rate(inp)
    cssi = scaled = None
    if inp.cfg.cssi.n_fine > 0 and tf_gene_pairs(inp) >= CSSI_TIMED_FROM:
        try:
            cssi, scaled = cssi_rates(inp, observed, cache)
        except (ValueError, TooFewStrata):     # a share of the panel too small to score: the stage is left untimed
            pass
    return Calibration(seconds=seconds, forward_bytes=one, per_cell_bytes=per_cell, base_bytes=base,
                       length=int(np.asarray(tokens.attention_mask)[longest[0]].sum()), ranking_call_seconds=call,
                       ranking_source_seconds=per_source, sae_step_seconds=step, forward_seconds=plain,
                       pair_universe=pairs, biology_seconds=biology_one, biology_layer_seconds=biology_layer,
                       incremental_seconds=incremental, incremental_row_seconds=per_row,
                       entropy_element_seconds=entropy, readout_item_seconds=readout,
                       confounds_seconds=(confounds_rate(inp, observed) if tf_gene_pairs(inp) >= CONFOUNDS_TIMED_FROM
                                          else None),
                       write_byte_seconds=write_rate(cache, min(WRITE_PROBE_BYTES, max(store_bytes, 2 ** 20))),
                       cssi_seconds=cssi, scaling_seconds=scaled)


def tf_gene_pairs(inp: Inputs) -> int:
    """(reference TF, panel gene) pairs, at most, that the confound stage fits on and CSSI and scaling score (TFs
    without a co-observed target are left out): what decides whether their probes are worth running."""
    return int(inp.panel["is_tf"].sum()) * len(inp.panel)


def confounds_rate(inp: Inputs, observed: np.ndarray, shares: tuple[float, float] = (1 / 8, 1 / 4)) -> float:
    """Seconds of the reference-side confound stage (:func:`analysis.stages.confounds.run`), timed for real on the
    run's cells, references and settings (``observed``: the co-observed pairs) in two parts:

    - the stage with one degree-null draw, over panels that keep each of ``shares`` of the reference TFs, spread over
      them (and every other gene), extended to all of them (with 16 TFs or fewer, on all of them): the residualisation
      fits grow with the TFs x genes they score. The correlation is the real one over the attention cells: how long
      the boosted fits run before they stop depends on how well the expression covariates predict the scores, which
      they do for a correlation and not for random numbers (a random correlation stopped at 10-15 of 150 rounds; the
      real one ran all 150). The attention scores are random: the model's are not known before the run;
    - each further degree-null draw, timed on every reference's whole evaluable universe (:func:`degree_draw_seconds`):
      a curveball draw's trades grow with the TFs times their mean degree, which a share of the TFs does not keep.
    """
    panel = inp.panel
    tfs = np.flatnonzero(panel["is_tf"].to_numpy(dtype=bool))
    if tfs.size < 2:                        # the degree null trades targets between two TFs or more
        return 0.0
    rng = np.random.default_rng(0)
    counts = ([tfs.size] if tfs.size <= 16 else            # few TFs: the whole stage is the cheaper probe
              sorted({int(round(share * tfs.size)) for share in shares}))
    rho = spearman_edges(inp.attention_cell_data, panel).scores[0]
    one_draw = dataclasses.replace(inp.cfg.perturbation, n_degree_null=1)

    def timed_share(n_tfs: int) -> float:
        spread = tfs[np.linspace(0, tfs.size - 1, n_tfs).round().astype(np.int64)]
        keep = np.sort(np.concatenate([np.flatnonzero(~panel["is_tf"].to_numpy(dtype=bool)), spread]))
        sub = panel.iloc[keep].reset_index(drop=True)
        n = keep.size
        seen = observed[np.ix_(keep, keep)]
        attention = EdgeScores(rng.random((1, n, n)), pd.DataFrame({"edge_type": ["attention_layer_mean"],
                                                                     "layer": [inp.readout_layer], "head": [-1]}),
                               seen, sub, {})
        corr = EdgeScores(rho[np.ix_(keep, keep)][None], pd.DataFrame({"edge_type": ["spearman"], "layer": [-1],
                                                                        "head": [-1]}), seen, sub, {})
        return seconds_of(lambda: reference_confounds(inp.attention_cell_data, sub, attention, corr, inp.references,
                                                  one_draw, inp.readout_layer))
    times = [timed_share(n) for n in counts]
    per_tf = max(times[-1] - times[0], 0.0) / max(counts[-1] - counts[0], 1)
    further = max(inp.cfg.perturbation.n_degree_null - 1, 0) * degree_draw_seconds(inp, observed)
    return times[0] + (tfs.size - counts[0]) * per_tf + further


def degree_draw_seconds(inp: Inputs, observed: np.ndarray) -> float:
    """Seconds of one further draw of :func:`~analysis.scoring.confounds.degree_null` for the stage's three edge
    matrices, summed over the run's references: timed for real with one and with three draws on each reference's
    evaluable universe over the co-observed pairs ``observed`` (random scores: a draw's cost is the curveball's and
    the AUROCs', neither of which depends on the values)."""
    rng = np.random.default_rng(0)
    seconds = 0.0
    for ref in inp.references:
        uni = evaluable_universe(inp.panel, ref, observed)
        if uni.n_pos == 0:
            continue
        scores = rng.random((3, *uni.labels.shape))
        one, three = (seconds_of(lambda n=n: degree_null(scores, uni.labels, uni.pair_mask, n_null=n,
                                                     seed=inp.cfg.perturbation.seed)) for n in (1, 3))
        seconds += max(three - one, 0.0) / 2
    return seconds


def ablation_scoring_rate(inp: Inputs, probe_rows: int = 256, probe_perturbations: int = 50) -> tuple[float, float]:
    """(seconds of :func:`~analysis.scoring.heads.attention_entropy` per stored per-head score, seconds of scoring
    one sweep item's read-out), timed for real: the entropy of two heads of ``probe_rows`` random source rows over the
    panel; the read-out's reference recovery and perturbation-first AUROC
    (:func:`~analysis.scoring.perturbation.readout_auroc`) on random sums against random DE tables of half and all of
    up to ``probe_perturbations`` of the run's perturbed panel genes: a fixed part and a part per perturbation,
    extended to all of them (every one counted as evaluable: at most the stage's cost)."""
    g, panel = len(inp.panel), inp.panel
    rng = np.random.default_rng(0)
    rows = min(probe_rows, max(int(inp.source_rows.size), 1))
    sums = rng.random((1, 2, rows, g), dtype=np.float32)
    entropy = seconds_of(lambda: attention_entropy(sums, np.ones((rows, g)))) / sums.size
    symbols = panel["symbol"].to_numpy()
    universe = symbols[panel["in_universe"].to_numpy(dtype=bool)]
    perturbed = [s for s in (inp.cells.perturbed_genes() if inp.cells.perturbation_col is not None else [])
                 if s in set(symbols)]
    sizes = sorted({max(len(perturbed[:probe_perturbations]) // 2, 1), len(perturbed[:probe_perturbations])})
    if not perturbed:
        return entropy, 0.0
    sums, counts = rng.random(g * g), np.ones(g * g)

    def timed_score(n: int) -> float:
        probe = perturbed[:n]
        de = pd.DataFrame({"perturbation": np.repeat(probe, universe.size), "symbol": np.tile(universe, n),
                           "is_de": rng.random(n * universe.size) < 0.05})
        de["is_self"] = de["perturbation"] == de["symbol"]
        score = readout_auroc(panel, de, inp.readout_layer)
        return seconds_of(lambda: score(sums, counts))
    times = [timed_score(n) for n in sizes]
    per_perturbation = max(times[-1] - times[0], 0.0) / max(sizes[-1] - sizes[0], 1)
    return entropy, times[0] + (len(perturbed) - sizes[0]) * per_perturbation


def co_observed(inp: Inputs) -> np.ndarray:
    """``[G, G]`` bool: panel gene pairs that share an attention cell's input (the store's co-observation, from the
    tokens, without a forward: :func:`~analysis.interp.attention.count_pairs`)."""
    tokens, g = inp.attention_tokens, len(inp.panel)
    panel_of_gene = np.full(len(tokens.genes), -1, dtype=np.int64)
    panel_of_gene[inp.panel["gene_index"].to_numpy()] = np.arange(g)
    return count_pairs(tokens, panel_of_gene, g)[0] > 0


def biology_rate(inp: Inputs, observed: np.ndarray) -> tuple[float, float]:
    """(seconds of layer biology with one layer, seconds each further layer adds): the stage's three analyses
    (:mod:`analysis.scoring.biology`) timed for real on one and on two layers of random head-mean scores and a random
    correlation over the run's panel, co-observed pairs (``observed`` ``[G, G]``) and references."""
    g = len(inp.panel)
    rng = np.random.default_rng(0)
    corr = EdgeScores(rng.uniform(-1, 1, (1, g, g)), pd.DataFrame({"edge_type": ["spearman"], "layer": -1,
                                                                     "head": -1}), observed, inp.panel, {})
    references = inp.pair_references + inp.references

    def run(n_layers: int) -> float:
        means = EdgeScores(rng.random((n_layers, g, g)), pd.DataFrame({"edge_type": "attention_layer_mean",
                                                                        "layer": np.arange(n_layers), "head": -1}),
                           observed, inp.panel, {})
        return seconds_of(lambda: (biology.layer_profiles(means, corr, references),
                               biology.expression_control(means, corr, references,
                                                          n_negatives=inp.cfg.biology.n_negatives),
                               biology.attention_expression_agreement(means, corr)))
    one = run(1)
    return one, max(run(2) - one, 0.0)


def observation_count(inp: Inputs) -> int:
    """(perturbation, universe gene) observations the incremental-value models are fitted on (at most: a
    perturbation with no DE target, or only DE targets, is left out): 0 without a perturbation column."""
    if inp.cells.perturbation_col is None:
        return 0
    return len(inp.cells.perturbed_genes()) * max(int(inp.panel["in_universe"].sum()) - 1, 0)


def _observations(n_rows: int, n_perturbations: int, edges: list[str], seed: int = 0) -> pd.DataFrame:
    """An observation table (:func:`analysis.scoring.confounds.observation_table`'s columns) of ``n_rows`` random
    (perturbation, gene) rows over ``n_perturbations`` perturbations, with rare labels that depend on one gene
    feature and one edge, as the models meet in a screen."""
    rng = np.random.default_rng(seed)
    genes = max(2, n_rows // n_perturbations)
    x = rng.standard_normal((n_perturbations * genes, len(GENE_FEATURES) + len(edges)))
    label = rng.random(x.shape[0]) < 1 / (1 + np.exp(3.5 - 0.8 * x[:, 0] - 0.3 * x[:, len(GENE_FEATURES)]))
    return pd.DataFrame({"perturbation": np.repeat(np.arange(n_perturbations).astype(str), genes),
                         "symbol": np.tile(np.arange(genes).astype(str), n_perturbations), "label": label,
                         **dict(zip([*GENE_FEATURES, *edges], x.T))})


def incremental_rate(inp: Inputs) -> tuple[float, float]:
    """(seconds, seconds per further observation) of :func:`analysis.scoring.confounds.incremental_value` on the
    run's edges (attention and every correlation variant), splits and bootstrap size, timed for real on random
    observation tables of each of :data:`INCREMENTAL_PROBE_ROWS` rows (the fits and the bootstrap grow with the
    rows; the models' fixed cost does not)."""
    edges = ["attention", *CORRELATION_EDGE_TYPES]
    n_perts = len(inp.cells.perturbed_genes())
    genes = max(int(inp.panel["in_universe"].sum()) - 1, 2)
    times = [seconds_of(lambda rows=rows: incremental_value(
        _observations(rows, min(n_perts, max(5, rows // genes)), edges), edges, n_boot=inp.cfg.perturbation.n_boot,
        seed=inp.cfg.perturbation.seed)) for rows in INCREMENTAL_PROBE_ROWS]
    small, large = INCREMENTAL_PROBE_ROWS
    return times[0], max(times[1] - times[0], 0.0) / (large - small)


def write_rate(directory: Path, nbytes: int = WRITE_PROBE_BYTES) -> float:
    """Seconds per byte of writing an array to a new ``.npy`` file in ``directory`` (where the run's stores go; the
    system's temporary directory while it does not exist yet), as :meth:`~analysis.io.stores.AttentionStore.save`
    writes: ``nbytes`` written for real, then removed."""
    directory = Path(directory) if Path(directory).is_dir() else Path(tempfile.gettempdir())
    data = np.ones(nbytes // 8)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".write-probe-") as probe:
        return seconds_of(lambda: np.save(Path(probe) / "probe.npy", data)) / nbytes


def ranking_rate(inp: Inputs, observed: np.ndarray) -> tuple[float, float]:
    """(seconds of one :func:`~analysis.scoring.ranking.rank_heads` call's fixed part, seconds per ranked source),
    each summed over the run's references and ranking directions: ``rank_heads`` timed for real on one and on two
    sources of random scores over the run's panel and co-observed pairs (``observed`` ``[G, G]``: they make the
    evaluable TFs and candidate pairs), against each reference, with the run's null size and top-k (the difference is
    a source's cost; ranking time does not depend on the scores' values)."""
    cfg, g = inp.cfg.ranking, len(inp.panel)
    rng = np.random.default_rng(0)
    probes = [EdgeScores(rng.random((n, g, g)), pd.DataFrame({"edge_type": "attention", "layer": 0,
                                                                 "head": np.arange(n)}), observed, inp.panel, {})
              for n in (1, 2)]
    call = per_source = 0.0
    for ref in inp.references:
        for direction in cfg.directions:
            try:
                one, two = (seconds_of(lambda e=e: rank_heads(e, ref, direction=direction, top_k=cfg.top_k,
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
    seconds = seconds_of(lambda: train_sae(lambda: iter(batches), d, n_features=sae.expansion * d, k=sae.k, epochs=1,
                                       lr=sae.lr, seed=sae.seed, device=inp.adapter.device))
    return seconds / steps
