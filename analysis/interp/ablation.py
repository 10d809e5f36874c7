"""Causal ablation with intervention fidelity (paper sections 2.5 and 4.5, Supplementary Notes 14.3, 14.4, 14.7).

For a fixed set of cells, every intervention (a list of :class:`~analysis.interp.hooks.InterventionSpec`) is run next
to the unablated baseline, batch by batch, and read out three ways:

- fidelity: per-layer hidden-state cosine distance and output-logit cosine distance to the baseline (mean over
  a cell's real tokens; mean and max over cells), so a no-op intervention is visible;
- the model's own behaviour: masked-gene loss and accuracy on one fixed, seeded held-out masking (15% of gene
  tokens, all replaced by ``<mask>``), and the reference-dependent "target recall" behaviour of
  analysis.interp.positive_control, paired per cell with the baseline (Wilcoxon signed-rank);
- the pre-specified read-out layer's head-mean attention recomputed under the intervention: reference
  recovery AUROC and (with perturbation data) per-perturbation AUROC, paired per perturbation.

Sweeps are written once (:func:`head_set`) and specialised per family: top-k / bottom-k heads by reference
AUROC, matched random-k draws, uniform attention on top-k and random-k, a whole layer, and MLP blocks.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata

from .attention import _capture_projections, _panel_batch, panel_rows_attention
from .hooks import head_output_means, hooked
from .interventions import InterventionSpec, intervention_key
from ..models.geneformer.adapter import GeneformerAdapter
from .positive_control import TargetSets, target_recall_loss
from ..scoring.ranking import Universe, auroc_from_ranks
from ..scoring.stats import benjamini_hochberg, wilcoxon_p
from ..models.geneformer.tokenizer import TokenizedCells

IGNORE = -100


@dataclass(frozen=True)
class SweepItem:
    """One intervention of a sweep: ``family`` (top_k, bottom_k, random_k, uniform_top_k, uniform_random_k,
    whole_layer, mlp_layer, mlp_late_block), its size ``k`` (heads or layers) and ``draw``: the random draw, or
    for ``mlp_layer`` the layer; -1 otherwise."""

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


def sweep(head_order: Sequence[tuple[int, int]], n_layers: int, *, readout_layer: int,
          ks: Sequence[int] = (1, 5, 10, 20, 50), n_random: int = 3, seed: int = 0) -> list[SweepItem]:
    """The standard sweep; ``head_order`` lists every (layer, head), best-ranked first."""
    rng = np.random.default_rng(seed)
    heads = list(head_order)
    n = len(heads)
    items = []
    for k in sorted({min(k, n) for k in ks}):
        items.append(SweepItem("top_k", k, -1, zero_heads(heads[:k])))
        items.append(SweepItem("bottom_k", k, -1, zero_heads(heads[-k:])))
        items.append(SweepItem("uniform_top_k", k, -1, uniform_heads(heads[:k])))
        for d in range(n_random):
            pick = [heads[i] for i in rng.choice(n, k, replace=False)]
            items.append(SweepItem("random_k", k, d, zero_heads(pick)))
            items.append(SweepItem("uniform_random_k", k, d, uniform_heads(pick)))
    n_heads = n // n_layers
    items.append(SweepItem("whole_layer", n_heads, -1, zero_heads([(readout_layer, h) for h in range(n_heads)])))
    for layer in range(n_layers):
        items.append(SweepItem("mlp_layer", 1, layer, (InterventionSpec("zero_mlp", layer),)))
    late = list(range(n_layers // 2, n_layers))
    items.append(SweepItem("mlp_late_block", len(late), -1, tuple(InterventionSpec("zero_mlp", l) for l in late)))
    unique = {}
    for item in items:  # equal spec sets (e.g. top-k = bottom-k when k = all heads) run once
        unique.setdefault((item.family, item.k, item.draw, item.key), item)
    return list(unique.values())


@dataclass(frozen=True)
class AblationInputs:
    """Cells for ablation with one fixed masking: ``masked_ids``/``labels`` ``[cells, seq]`` (labels -100 off
    the masked set); ``panel``/``universe`` define the read-out layer's reference recovery."""

    tokens: TokenizedCells
    masked_ids: np.ndarray
    labels: np.ndarray
    panel: pd.DataFrame
    universe: Universe
    readout_layer: int


def fixed_masking(tokens: TokenizedCells, mask_id: int, *, probability: float = 0.15, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded held-out masking of gene positions (at least one per cell); all masked tokens become ``<mask>``."""
    rng = np.random.default_rng(seed)
    genes = tokens.gene_index >= 0
    chosen = (rng.random(genes.shape) < probability) & genes
    for i in np.nonzero(~chosen.any(axis=1))[0]:
        chosen[i, rng.choice(np.nonzero(genes[i])[0])] = True
    labels = np.where(chosen, tokens.input_ids, IGNORE)
    return np.where(chosen, mask_id, tokens.input_ids), labels


@dataclass
class _Accumulator:
    n_cells: int
    n_layers: int
    n_heads: int
    n_panel: int

    def __post_init__(self):
        self.loss = np.zeros(self.n_cells)
        self.accuracy = np.zeros(self.n_cells)
        self.hidden_cos = np.zeros((self.n_cells, self.n_layers + 1))
        self.logit_cos = np.zeros(self.n_cells)
        self.target_recall = np.full(self.n_cells, np.nan)
        self.sums = np.zeros((self.n_heads, self.n_panel * self.n_panel))
        self.counts = np.zeros(self.n_panel * self.n_panel)  # shared pair counts of the cells, set at the end


def _cos_distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Per cell, mean over real tokens of 1 - cos(a, b); ``a``/``b``: ``[batch, seq, dim]``."""
    d = 1 - torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)
    return ((d * mask).sum(1) / mask.sum(1)).cpu().numpy()


def run_interventions(adapter: GeneformerAdapter, inputs: AblationInputs, items: dict[str, Sequence[InterventionSpec]],
                      *, head_means: dict | None = None, batch_size: int = 8, targets: TargetSets | None = None,
                      progress: Callable[[float], None] | None = None) -> dict[str, _Accumulator]:
    """Per-cell read-outs for the baseline (key ``baseline``) and every intervention in ``items``."""
    tok = inputs.tokens
    panel_of_gene = np.full(len(tok.genes), -1, dtype=np.int64)
    panel_of_gene[inputs.panel["gene_index"].to_numpy()] = np.arange(len(inputs.panel))
    g = len(inputs.panel)
    keys = ["baseline"] + list(items)
    acc = {k: _Accumulator(tok.n_cells, adapter.n_layers, adapter.n_heads, g) for k in keys}
    counts = np.zeros(g * g)
    batches = list(tok.batches(batch_size))
    done = 0
    for idx in batches:
        sub = tok.subset(idx)
        width = sub.input_ids.shape[1]
        mask = torch.as_tensor(sub.attention_mask, device=adapter.device)
        pb = _panel_batch(sub.gene_index, panel_of_gene, g, adapter.device)
        np.add.at(counts, pb.pair_flat.cpu().numpy(), 1)
        labels = torch.as_tensor(inputs.labels[idx, :width], device=adapter.device)
        masked = inputs.masked_ids[idx, :width]
        base = None
        for key in keys:
            specs = [] if key == "baseline" else items[key]
            with hooked(adapter, specs, head_means=head_means), _capture_projections(adapter) as cap:
                out = adapter.forward(sub.input_ids, sub.attention_mask, output_hidden_states=True)
                block = panel_rows_attention(cap[(inputs.readout_layer, "query")], cap[(inputs.readout_layer, "key")],
                                             mask.bool(), pb.positions, adapter.n_heads)
                mlm = adapter.forward(masked, sub.attention_mask).logits
            a = acc[key]
            vals = block[pb.pair_cell, :, pb.pair_row, pb.pair_col].double().cpu().numpy()
            np.add.at(a.sums.T, pb.pair_flat.cpu().numpy(), vals)
            hit = labels != IGNORE
            ce = torch.nn.functional.cross_entropy(mlm.float().transpose(1, 2), labels, ignore_index=IGNORE,
                                                   reduction="none")
            a.loss[idx] = ((ce * hit).sum(1) / hit.sum(1)).cpu().numpy()
            a.accuracy[idx] = (((mlm.argmax(-1) == labels) & hit).sum(1) / hit.sum(1)).cpu().numpy()
            if key == "baseline":
                base = out
            for layer, (h, hb) in enumerate(zip(out.hidden_states, base.hidden_states)):
                a.hidden_cos[idx, layer] = _cos_distance(h, hb, mask)
            a.logit_cos[idx] = _cos_distance(out.logits, base.logits, mask)
            if targets is not None:
                a.target_recall[idx] = target_recall_loss(out.logits, targets, idx)
        done += len(idx)
        if progress is not None:
            progress(done / tok.n_cells)
    for a in acc.values():
        a.counts = counts
    return acc


def _readout_auroc(a: _Accumulator, universe: Universe, n_panel: int) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(a.counts > 0, a.sums / np.maximum(a.counts, 1), np.nan).mean(0).reshape(n_panel, n_panel)
    scores = np.nan_to_num(mean[universe.tf_rows][universe.pair_mask])
    return float(auroc_from_ranks(rankdata(scores), universe.labels[universe.pair_mask]))


def _paired_row(values: np.ndarray, baseline: np.ndarray) -> dict:
    diff = values - baseline
    se = diff.std(ddof=1) / np.sqrt(diff.size) if diff.size > 1 else np.nan
    return {"value": float(values.mean()), "baseline": float(baseline.mean()), "delta": float(diff.mean()),
            "ci_low": float(diff.mean() - 1.96 * se), "ci_high": float(diff.mean() + 1.96 * se),
            "p": wilcoxon_p(diff), "n": int(diff.size)}


def summarise(acc: dict[str, _Accumulator], inputs: AblationInputs, items: Sequence[SweepItem],
              perturbation_auroc: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, fidelity): tidy read-outs per sweep item with paired tests vs the baseline and BH q within each
    read-out; fidelity = per-layer hidden-state cosine distance to the baseline (mean and max over cells)."""
    base = acc["baseline"]
    g = len(inputs.panel)
    base_auc = _readout_auroc(base, inputs.universe, g)
    base_pert = perturbation_auroc(base.sums, base.counts) if perturbation_auroc else None
    rows, fid = [], []
    for item in items:
        a = acc[item.key]
        info = {"intervention": item.key, "family": item.family, "k": item.k, "draw": item.draw}
        rows.append({**info, "readout": "mlm_loss", **_paired_row(a.loss, base.loss)})
        rows.append({**info, "readout": "mlm_accuracy", **_paired_row(a.accuracy, base.accuracy)})
        rows.append({**info, "readout": "logit_cosine_distance", **_paired_row(a.logit_cos, base.logit_cos)})
        has = ~np.isnan(base.target_recall)
        if has.sum() > 1:
            rows.append({**info, "readout": "target_recall_loss",
                         **_paired_row(a.target_recall[has], base.target_recall[has])})
        auc = _readout_auroc(a, inputs.universe, g)
        rows.append({**info, "readout": "reference_auroc", "value": auc, "baseline": base_auc, "delta": auc - base_auc,
                     "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "n": inputs.universe.n_pos})
        if base_pert is not None and base_pert.size:
            rows.append({**info, "readout": "perturbation_auroc", **_paired_row(perturbation_auroc(a.sums, a.counts), base_pert)})
        for layer in range(a.hidden_cos.shape[1]):
            fid.append({**info, "layer": layer, "hidden_cos_mean": float(a.hidden_cos[:, layer].mean()),
                        "hidden_cos_max": float(a.hidden_cos[:, layer].max())})
    results = pd.DataFrame(rows)
    results["q"] = np.nan
    for _, grp in results.groupby("readout"):
        if grp["p"].notna().any():
            results.loc[grp.index, "q"] = benjamini_hochberg(grp["p"].to_numpy())
    return results, pd.DataFrame(fid)


def prepare(adapter: GeneformerAdapter, tokens: TokenizedCells, panel: pd.DataFrame, universe: Universe, *,
            mask_id: int, readout_layer: int, n_cells: int, seed: int = 0) -> AblationInputs:
    """Pick ``n_cells`` cells (seeded) and fix their masking."""
    idx = np.sort(np.random.default_rng(seed).choice(tokens.n_cells, min(n_cells, tokens.n_cells), replace=False))
    sub = tokens.subset(idx)
    masked, labels = fixed_masking(sub, mask_id, seed=seed)
    return AblationInputs(sub, masked, labels, panel, universe, readout_layer)


def ablate(adapter: GeneformerAdapter, inputs: AblationInputs, items: Sequence[SweepItem], *, batch_size: int = 8,
           targets: TargetSets | None = None,
           perturbation_auroc: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
           progress: Callable[[float], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run ``items`` (plus the baseline) and summarise; mean-head outputs are computed on the same cells."""
    needs_means = any(s.kind == "mean_head" for it in items for s in it.specs)
    means = head_output_means(adapter, inputs.tokens.input_ids, inputs.tokens.attention_mask) if needs_means else None
    acc = run_interventions(adapter, inputs, {it.key: it.specs for it in items}, head_means=means,
                            batch_size=batch_size, targets=targets, progress=progress)
    return summarise(acc, inputs, items, perturbation_auroc)
