"""Feature interventions through a residual-stream SAE (the companion paper's causal specificity, here on
every layer the run trained an SAE for, live).

An edit (:class:`analysis.interp.interventions.FeatureEdit`) multiplies chosen features' activations by a scale
(0: ablation) at one layer's output, at gene positions, through the layer's TopK SAE with the error term kept
(:meth:`analysis.interp.sae.TopKSAE.intervene`: the activations move by ``(edit(z) - z) W_dec^T``, so scale 1 changes
nothing). Each edit is run next to the unedited model on the ablation's cells and fixed masking
(:class:`analysis.interp.ablation.AblationInputs`) and read out as:

- the behaviour read-out per cell (``adapter.masked_prediction`` on the masked input) and the output's cosine
  distance to the unedited pass (``adapter.output_distance``), as the head ablations are;
- every gene's prediction change (``adapter.prediction_change`` at each gene position of the unmasked input, summed
  per gene), and the same split by whether one of the edited features fired at the position before the edit: the
  ground for causal specificity (:func:`analysis.scoring.feature_effects.summarise_feature_edits`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..models.base import ModelAdapter
from .ablation import AblationInputs
from .interventions import FeatureEdit
from .replay import replayed_layers
from .sae import TopKSAE
from .sae_splice import replaced_residual


def edited_residual(sae: TopKSAE, edit: FeatureEdit, fired: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """``rows [n, d] -> [n, d]``: ``edit`` applied through ``sae`` with the error term kept; ``fired["rows"]`` is set
    to ``[n]`` bool, whether one of the edited features was active at the row before the edit."""
    index = torch.tensor(edit.features, dtype=torch.long)

    def scale(z: torch.Tensor) -> torch.Tensor:
        fired["rows"] = (z[:, index.to(z.device)] > 0).any(dim=1)
        z = z.clone()
        z[:, index.to(z.device)] *= edit.scale
        return z

    return lambda rows: sae.intervene(rows, scale)


@dataclass
class FeatureReadout:
    """Read-outs of one edit (or the unedited pass) on ``n_cells`` cells over ``n_genes`` genes: per cell ``loss``,
    ``accuracy`` and ``output_cos``; per gene ``change_sum`` / ``change_count`` ``[n_genes]`` (prediction change
    summed over the gene's positions); per position class ``fired_sum`` / ``fired_count`` (one of the edited
    features active before the edit) and ``quiet_sum`` / ``quiet_count`` (none active)."""

    n_cells: int
    n_genes: int

    def __post_init__(self):
        self.loss = np.zeros(self.n_cells)
        self.accuracy = np.zeros(self.n_cells)
        self.output_cos = np.zeros(self.n_cells)
        self.change_sum = np.zeros(self.n_genes)
        self.change_count = np.zeros(self.n_genes, dtype=np.int64)
        self.fired_sum = self.quiet_sum = 0.0
        self.fired_count = self.quiet_count = 0


def run_feature_edits(adapter: ModelAdapter, inputs: AblationInputs, saes: Mapping[int, TopKSAE],
                      edits: Sequence[FeatureEdit], *, batch_size: int = 8,
                      progress: Callable[[float], None] | None = None) -> dict[str, FeatureReadout]:
    """Read-outs (module doc) of the unedited model (key ``baseline``) and of every edit (key ``edit.key``), each
    through the SAE of its layer in ``saes``. The unedited passes run once per batch; each edit adds two forwards
    (the unmasked input for prediction change, the masked one for behaviour) from the layer after its own, the
    layers up to its own replayed from the unedited pass (:mod:`.replay`; the edit's hook still acts on the replayed
    output)."""
    tok = inputs.tokens
    n_genes = len(tok.genes)
    out = {"baseline": FeatureReadout(tok.n_cells, n_genes), **{e.key: FeatureReadout(tok.n_cells, n_genes)
                                                                for e in edits}}
    saes = {layer: sae.to(adapter.device) for layer, sae in saes.items()}
    done = 0
    with torch.no_grad():
        for idx in tok.batches(batch_size):
            sub = tok.subset(idx)
            chosen = inputs.chosen[idx, :sub.input_ids.shape[1]]
            masked = adapter.masked(sub, chosen)
            genes = sub.gene_index >= 0
            gene_of_position = sub.gene_index[genes]
            positions_per_gene = np.bincount(gene_of_position, minlength=n_genes)
            real = adapter.as_tensor(sub.attention_mask).bool()
            base = adapter.forward(sub, output_hidden_states=True, decode=False)
            base_masked = adapter.forward(masked, output_hidden_states=True, decode=False)
            b = out["baseline"]
            b.loss[idx], b.accuracy[idx] = adapter.masked_prediction(base_masked, sub, chosen)
            for edit in edits:
                r, fired, where = out[edit.key], {}, {"mask": adapter.as_tensor(genes)}
                replace = edited_residual(saes[edit.layer], edit, fired)
                with replaced_residual(adapter, edit.layer, replace, where):
                    with replayed_layers(adapter, base.hidden_states, edit.layer + 1):
                        edited = adapter.forward(sub, decode=False)
                    fired_here = fired["rows"].cpu().numpy()      # gene positions of the unmasked input, row order
                    where["mask"] = adapter.as_tensor(masked.gene_index >= 0)
                    with replayed_layers(adapter, base_masked.hidden_states, edit.layer + 1):
                        edited_masked = adapter.forward(masked, decode=False)
                    r.loss[idx], r.accuracy[idx] = adapter.masked_prediction(edited_masked, sub, chosen)
                r.output_cos[idx] = adapter.output_distance(edited, base, real)
                change = adapter.prediction_change(edited, base).double().cpu().numpy()[genes]
                r.change_sum += np.bincount(gene_of_position, weights=change, minlength=n_genes)
                r.change_count += positions_per_gene
                r.fired_sum += float(change[fired_here].sum())
                r.fired_count += int(fired_here.sum())
                r.quiet_sum += float(change[~fired_here].sum())
                r.quiet_count += int((~fired_here).sum())
            done += len(idx)
            if progress is not None:
                progress(done / tok.n_cells)
    return out
