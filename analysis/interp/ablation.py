"""Causal ablation with intervention fidelity (paper sections 2.5 and 4.5, Supplementary Notes 14.3, 14.4, 14.7).

For a fixed set of cells, every intervention (a list of :class:`~analysis.interp.interventions.InterventionSpec`) is
run next to the unablated baseline, batch by batch, through any model family's adapter, and read out three ways:

- fidelity: per-layer hidden-state cosine distance and output cosine distance to the baseline (Geneformer: the
  logits, mean over a cell's real tokens; scGPT: the predicted value profile over the cell's genes), so a no-op
  intervention is visible;
- the model's own behaviour, its pretraining objective on one fixed, seeded held-out masking of 15% of the gene
  positions (Geneformer: masked-gene cross-entropy and accuracy, masked tokens ``<mask>``; scGPT: masked-value MSE
  and exact-bin accuracy, masked values -1), and, for token-predicting models, the reference-dependent "target
  recall" behaviour of analysis.interp.positive_control;
- the pre-specified read-out layer's attention recomputed under the intervention (reference recovery and
  per-perturbation AUROC are scored from its sums by :mod:`analysis.scoring.ablation`).

This module produces per-cell read-outs (:class:`ReadoutAccumulator`); the paired tests against the baseline are
:func:`analysis.scoring.ablation.summarise`'s. Sweeps are written once (:func:`head_set`) and specialised per family
of intervention: top-k / bottom-k heads by reference AUROC (and by the composite score), random-k draws (unmatched,
layer-matched, entropy-matched), uniform attention on top-k and random-k, whole layers, and MLP layers and blocks.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..models.base import ModelAdapter, ModelOutput, TokenizedCells, masked_positions
from .ablation_baseline import READOUTS as BASELINE_READOUTS, BaselineStore
from .attention import AttentionSums, batch_layout, capture_projections, count_pairs
from .hooks import head_output_means, hooked
from .interventions import InterventionSpec, intervention_key
from .positive_control import TargetSets, target_recall_loss
from .replay import first_hooked_layer, replayed_layers


@dataclass(frozen=True)
class SweepItem:
    """One intervention of a sweep: ``family`` (top_k, bottom_k, composite_top_k, random_k, layer_matched_random_k,
    entropy_matched_random_k, uniform_top_k, uniform_random_k, whole_layer, mlp_layer, mlp_block), its size ``k``
    (heads or layers) and ``draw``: the random draw; for ``whole_layer`` and ``mlp_layer`` the layer, for
    ``mlp_block`` its first layer; -1 otherwise."""

    family: str
    k: int
    draw: int
    specs: tuple[InterventionSpec, ...]

    @property
    def key(self) -> str:
        return intervention_key(self.specs)


def head_set(kind: str, heads: Sequence[tuple[int, int]]) -> tuple[InterventionSpec, ...]:
    """One spec per layer covering the given (layer, head) pairs."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    return tuple(InterventionSpec(kind, layer, tuple(h)) for layer, h in sorted(by_layer.items()))


zero_heads = functools.partial(head_set, "zero_head")
uniform_heads = functools.partial(head_set, "uniform_head")


def layer_matched_draw(targets: Sequence[tuple[int, int]], heads: Sequence[tuple[int, int]],
                       rng: np.random.Generator) -> list[tuple[int, int]] | None:
    """Random heads with the same number per layer as ``targets``, none of them a target; None when a layer has too
    few other heads (e.g. ``targets`` is a whole layer)."""
    taken = set(targets)
    pick = []
    for layer in sorted({l for l, _ in targets}):
        need = sum(1 for l, _ in targets if l == layer)
        pool = [h for h in heads if h[0] == layer and h not in taken]
        if len(pool) < need:
            return None
        pick += [pool[i] for i in rng.choice(len(pool), need, replace=False)]
    return pick


def entropy_matched_draw(targets: Sequence[tuple[int, int]], heads: Sequence[tuple[int, int]], entropy: np.ndarray,
                         rng: np.random.Generator, *, n_nearest: int = 3) -> list[tuple[int, int]] | None:
    """Random heads whose attention entropies (``entropy`` ``[layers, heads]``) follow the targets': for each target in
    random order, one of the ``n_nearest`` not-yet-drawn non-target heads closest in entropy, uniformly (nearest-
    neighbour matching without replacement, randomised among near ties so draws differ); None when there are fewer
    non-target heads than targets."""
    taken = set(targets)
    pool = [h for h in heads if h not in taken]
    if len(pool) < len(targets):
        return None
    pick = []
    for t in rng.permutation(len(targets)):
        target = entropy[targets[t]]
        dist = np.abs(np.array([entropy[h] for h in pool]) - target)
        nearest = np.argsort(dist, kind="stable")[:n_nearest]
        pick.append(pool.pop(int(nearest[rng.integers(nearest.size)])))
    return pick


RANDOM_MATCHING = {"none": "random_k", "layer": "layer_matched_random_k", "entropy": "entropy_matched_random_k"}


def sweep(head_order: Sequence[tuple[int, int]], n_layers: int, *, readout_layer: int,
          ks: Sequence[int] = (1, 5, 10, 20, 50), n_random: int = 3, seed: int = 0,
          random_matching: Sequence[str] = ("none",), entropy: np.ndarray | None = None,
          composite_order: Sequence[tuple[int, int]] | None = None, whole_layers: Sequence[int] = (),
          mlp_blocks: Sequence[Sequence[int]] = ()) -> list[SweepItem]:
    """The standard sweep (paper section 2.5, Supplementary Note 14.3); ``head_order`` lists every (layer, head),
    best-ranked first. Per k: top-k, bottom-k and uniform top-k; ``n_random`` random-k draws for each
    ``random_matching`` (``none``: any heads; ``layer``: :func:`layer_matched_draw`; ``entropy``:
    :func:`entropy_matched_draw`, needs ``entropy``), zeroed and (unmatched only) uniform; composite top-k when
    ``composite_order`` is given (the paper's alternative ranking). Every head of each of ``whole_layers`` (default
    the read-out layer); every layer's MLP alone and each block of ``mlp_blocks`` (default the late half of the
    layers). A matched draw that cannot exist (no other heads in a layer) is left out."""
    rng = np.random.default_rng(seed)
    heads = list(head_order)
    n = len(heads)
    items = []
    for k in sorted({min(k, n) for k in ks}):
        items.append(SweepItem("top_k", k, -1, zero_heads(heads[:k])))
        items.append(SweepItem("bottom_k", k, -1, zero_heads(heads[-k:])))
        items.append(SweepItem("uniform_top_k", k, -1, uniform_heads(heads[:k])))
        if composite_order is not None:
            items.append(SweepItem("composite_top_k", k, -1, zero_heads(list(composite_order)[:k])))
        for matching in random_matching:
            for d in range(n_random):
                if matching == "none":
                    pick = [heads[i] for i in rng.choice(n, k, replace=False)]
                    items.append(SweepItem("uniform_random_k", k, d, uniform_heads(pick)))
                elif matching == "layer":
                    pick = layer_matched_draw(heads[:k], heads, rng)
                else:
                    pick = entropy_matched_draw(heads[:k], heads, entropy, rng)
                if pick is not None:
                    items.append(SweepItem(RANDOM_MATCHING[matching], k, d, zero_heads(pick)))
    n_heads = n // n_layers
    for layer in whole_layers or (readout_layer,):
        items.append(SweepItem("whole_layer", n_heads, layer, zero_heads([(layer, h) for h in range(n_heads)])))
    for layer in range(n_layers):
        items.append(SweepItem("mlp_layer", 1, layer, (InterventionSpec("zero_mlp", layer),)))
    for block in mlp_blocks or (range(n_layers // 2, n_layers),):
        block = sorted(set(block))
        items.append(SweepItem("mlp_block", len(block), block[0], tuple(InterventionSpec("zero_mlp", l) for l in block)))
    unique = {}
    for item in items:  # equal spec sets (e.g. top-k = bottom-k when k = all heads) run once
        unique.setdefault((item.family, item.k, item.draw, item.key), item)
    return list(unique.values())


@dataclass(frozen=True)
class AblationInputs:
    """Cells for ablation with one fixed masking: ``chosen`` ``[cells, seq]`` bool, the held-out gene positions of the
    behaviour read-out (:func:`analysis.models.base.masked_positions`); ``panel`` and ``readout_layer`` define the
    attention read-out."""

    tokens: TokenizedCells
    chosen: np.ndarray
    panel: pd.DataFrame
    readout_layer: int


@dataclass
class ReadoutAccumulator:
    """Per-cell read-outs of one intervention (or the baseline): behaviour ``loss`` / ``accuracy`` on the fixed
    masking, ``hidden_cos`` ``[cells, layers + 1]`` and ``output_cos`` cosine distances to the baseline,
    ``target_recall`` (NaN where undefined), and the read-out layer's head-mean attention ``sums`` ``[G * G]`` (what
    both attention read-outs score; per head it would be ``heads x`` larger per sweep item) with the cells' shared
    pair ``counts`` ``[G * G]``."""

    n_cells: int
    n_layers: int
    n_heads: int
    n_panel: int

    def __post_init__(self):
        self.loss = np.zeros(self.n_cells)
        self.accuracy = np.zeros(self.n_cells)
        self.hidden_cos = np.zeros((self.n_cells, self.n_layers + 1))
        self.output_cos = np.zeros(self.n_cells)
        self.target_recall = np.full(self.n_cells, np.nan)
        self.sums = np.zeros(self.n_panel * self.n_panel)
        self.counts = np.zeros(self.n_panel * self.n_panel)  # shared pair counts of the cells, set at the end


@dataclass(frozen=True)
class BaselineBatch:
    """The unablated pass on one batch: its unmasked ``output`` (with hidden states) and the masked input's hidden
    states, L + 1 tensors ``[b, s, d]`` each."""

    output: ModelOutput
    masked_hidden: tuple[torch.Tensor, ...]

    @property
    def hidden(self) -> tuple[torch.Tensor, ...]:
        return self.output.hidden_states


def _cos_distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Per cell, mean over real tokens of 1 - cos(a, b); ``a``/``b``: ``[batch, seq, dim]``."""
    d = 1 - torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)
    return ((d * mask).sum(1) / mask.sum(1)).cpu().numpy()


def _read_out(adapter: ModelAdapter, inputs: AblationInputs, sub: TokenizedCells, masked: TokenizedCells,
              chosen: np.ndarray, idx: np.ndarray, readout: AttentionSums, acc: ReadoutAccumulator,
              specs: Sequence[InterventionSpec], *, base: BaselineBatch | None, head_means: dict | None,
              targets: TargetSets | None) -> tuple[ModelOutput, tuple[torch.Tensor, ...]]:
    """One intervention (``specs``; none = the baseline) on one batch, every read-out into ``acc`` at cells
    ``idx``; fidelity against ``base`` (None: this pass is the baseline), whose hidden states also stand in for the
    layers before the first intervened one (:mod:`.replay`; a replayed read-out layer adds nothing to ``acc.sums``,
    and :func:`run_interventions` gives it the baseline's). ``readout``: the batch's read-out-layer reducer (its
    batch set). Returns the unmasked pass's output and the masked pass's hidden states."""
    mask = adapter.as_tensor(sub.attention_mask).bool()
    readout.layer_sums.zero_()
    start = 0 if base is None else first_hooked_layer(specs, adapter.n_layers)

    def reduce(layer, query, key):
        if layer == inputs.readout_layer:
            readout.add_layer(0, query, key)
    with hooked(adapter, specs, head_means=head_means):
        with capture_projections(adapter, on_layer=reduce), \
                replayed_layers(adapter, base.hidden if base else (), start):
            out = adapter.forward(sub, output_hidden_states=True, decode=False)
        with replayed_layers(adapter, base.masked_hidden if base else (), start):
            masked_out = adapter.forward(masked, output_hidden_states=base is None, decode=False)
    g2 = acc.sums.size
    acc.sums += readout.layer_sums[0, :g2].cpu().numpy()
    acc.loss[idx], acc.accuracy[idx] = adapter.masked_prediction(masked_out, sub, chosen)
    reference = base.output if base else out
    for layer, (h, hb) in enumerate(zip(out.hidden_states, reference.hidden_states)):
        acc.hidden_cos[idx, layer] = _cos_distance(h, hb, mask)
    acc.output_cos[idx] = adapter.output_distance(out, reference, mask)
    if targets is not None and adapter.predicts_tokens:
        acc.target_recall[idx] = target_recall_loss(adapter, out, targets, idx)
    return out, masked_out.hidden_states


def _stored_batch(adapter: ModelAdapter, hidden: np.ndarray, masked_hidden: np.ndarray, output: np.ndarray,
                  kind: str) -> BaselineBatch:
    """A baseline batch read back from a :class:`BaselineStore` as the pass it was written from."""
    def tensors(stack):
        return tuple(adapter.as_tensor(np.array(h)) for h in stack)    # copies: the store's arrays are read-only
    out = adapter.as_tensor(np.array(output))
    states = tensors(hidden)
    return BaselineBatch(ModelOutput(None, hidden_states=states, features=out) if kind == "features" else
                         ModelOutput(out, hidden_states=states), tensors(masked_hidden))


def run_interventions(adapter: ModelAdapter, inputs: AblationInputs, items: dict[str, Sequence[InterventionSpec]],
                      *, head_means: dict | None = None, batch_size: int = 8, targets: TargetSets | None = None,
                      progress: Callable[[float], None] | None = None,
                      baseline: BaselineStore | None = None) -> dict[str, ReadoutAccumulator]:
    """Per-cell read-outs for the baseline (key ``baseline``) and every intervention in ``items``.

    Each intervention costs two forwards (the unmasked input for fidelity, output distance, target recall and the
    read-out layer's attention; the masked input for behaviour), neither through a token-predicting model's
    vocabulary-sized decoder: output distance is computed from the decoder inputs and logits are decoded only at
    the masked and TF positions; both start at the intervention's first layer, the layers before it replayed from
    the unablated pass (:mod:`.replay`), which holds both inputs' hidden states for the batch. ``baseline``: a
    store of the unablated pass on these cells and batches (:mod:`.ablation_baseline`), read instead of running
    the baseline when complete, else filled on the way."""
    tok = inputs.tokens
    panel_of_gene = np.full(len(tok.genes), -1, dtype=np.int64)
    panel_of_gene[inputs.panel["gene_index"].to_numpy()] = np.arange(len(inputs.panel))
    g = len(inputs.panel)
    readout = AttentionSums((0,), adapter.n_heads, g, 0, n_columns=0, device=adapter.device)   # head mean, chunked
    no_sources = np.full(g, -1, dtype=np.int64)
    keys = ["baseline"] + list(items)
    acc = {k: ReadoutAccumulator(tok.n_cells, adapter.n_layers, adapter.n_heads, g) for k in keys}
    reuse = baseline is not None and baseline.complete
    kind = baseline.params()["output"] if reuse else None
    if reuse:
        for name, value in baseline.readouts().items():
            setattr(acc["baseline"], name, value)
    done = 0
    try:
        for number, idx in enumerate(tok.batches(batch_size)):
            sub = tok.subset(idx)
            chosen = inputs.chosen[idx, :sub.input_ids.shape[1]]
            masked = adapter.masked(sub, chosen)
            readout.start_batch(batch_layout(sub.gene_index, panel_of_gene, no_sources, adapter.device),
                                adapter.as_tensor(sub.attention_mask).bool())
            common = dict(head_means=head_means, targets=targets)
            if reuse:
                base = _stored_batch(adapter, *baseline.read_batch(number), kind)
            else:
                base = BaselineBatch(*_read_out(adapter, inputs, sub, masked, chosen, idx, readout, acc["baseline"],
                                                [], base=None, **common))
                if baseline is not None:
                    out = base.output
                    kind = "features" if out.features is not None else "prediction"
                    baseline.write_batch(number, base.hidden, base.masked_hidden,
                                         out.features if kind == "features" else out.prediction)
            for key in items:
                _read_out(adapter, inputs, sub, masked, chosen, idx, readout, acc[key], items[key], base=base,
                          **common)
            done += len(idx)
            if progress is not None:
                progress(done / tok.n_cells)
        counts = count_pairs(tok, panel_of_gene, g)[0].reshape(-1).astype(np.float64)
        for key, a in acc.items():
            a.counts = counts
            if key != "baseline" and first_hooked_layer(items[key], adapter.n_layers) > inputs.readout_layer:
                a.sums = acc["baseline"].sums       # the read-out layer was replayed: its attention is unchanged
        if baseline is not None and not reuse:
            baseline.finish({name: getattr(acc["baseline"], name) for name in BASELINE_READOUTS},
                            {"output": kind, "n_cells": tok.n_cells, "batch_size": batch_size})
    except BaseException:
        if baseline is not None and not reuse:
            baseline.discard()
        raise
    return acc


def prepare(tokens: TokenizedCells, panel: pd.DataFrame, *, readout_layer: int, n_cells: int,
            probability: float = 0.15, seed: int = 0) -> AblationInputs:
    """Pick ``n_cells`` cells (seeded) and fix their masking."""
    idx = np.sort(np.random.default_rng(seed).choice(tokens.n_cells, min(n_cells, tokens.n_cells), replace=False))
    sub = tokens.subset(idx)
    return AblationInputs(sub, masked_positions(sub, probability=probability, seed=seed), panel, readout_layer)


def ablate(adapter: ModelAdapter, inputs: AblationInputs, items: Sequence[SweepItem], *, batch_size: int = 8,
           targets: TargetSets | None = None, progress: Callable[[float], None] | None = None,
           baseline: BaselineStore | None = None) -> dict[str, ReadoutAccumulator]:
    """Run ``items`` (plus the baseline, or read it from ``baseline``) on the same cells; mean-head outputs are
    computed on those cells. The statistics are :func:`analysis.scoring.ablation.summarise`'s."""
    needs_means = any(s.kind == "mean_head" for it in items for s in it.specs)
    means = head_output_means(adapter, inputs.tokens) if needs_means else None
    return run_interventions(adapter, inputs, {it.key: it.specs for it in items}, head_means=means,
                             batch_size=batch_size, targets=targets, progress=progress, baseline=baseline)
