"""A sparse autoencoder inside the model: the residual stream after one layer replaced, at gene positions,
by what the SAE makes of it, with a forward hook at the model-family seam's layer site (``SiteMap.layer``), and the
family's behaviour read-out on the ablation's fixed masking (:class:`analysis.interp.ablation.AblationInputs`)
measured with and without it: how much of the model's behaviour the SAE's reconstruction carries."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch

from ..models.base import ModelAdapter
from .ablation import AblationInputs
from .replay import replayed_layers
from .sae import TopKSAE


@contextmanager
def replaced_residual(adapter: ModelAdapter, layer: int, replace: Callable[[torch.Tensor], torch.Tensor],
                      where: dict) -> Iterator[None]:
    """While in the block, the output of encoder layer ``layer`` (``[b, s, d]``) is ``replace(rows)`` at the
    positions ``where["mask"]`` (``[b, s]`` bool, set before each forward) and unchanged elsewhere."""
    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        mask = where["mask"]
        new = hidden.clone()
        new[mask] = replace(hidden[mask].float()).to(hidden.dtype)
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    handle = adapter.module(adapter.sites.layer(layer)).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def behaviour_with_reconstruction(adapter: ModelAdapter, inputs: AblationInputs, layer: int, sae: TopKSAE, *,
                                  batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per cell ``[cells]``: the behaviour loss (``adapter.masked_prediction``) of the masked input as it is, and with
    the residual stream after ``layer`` replaced at every gene position by the SAE's reconstruction ``x_hat`` (the
    layers up to ``layer`` replayed from the first pass, :mod:`.replay`)."""
    tok = inputs.tokens
    plain, spliced = np.zeros(tok.n_cells), np.zeros(tok.n_cells)
    sae = sae.to(adapter.device)
    where: dict = {}
    with torch.no_grad():
        for idx in tok.batches(batch_size):
            sub = tok.subset(idx)
            chosen = inputs.chosen[idx, :sub.input_ids.shape[1]]
            masked = adapter.masked(sub, chosen)
            unchanged = adapter.forward(masked, output_hidden_states=True, decode=False)
            plain[idx] = adapter.masked_prediction(unchanged, sub, chosen)[0]
            where["mask"] = adapter.as_tensor(masked.gene_index >= 0)
            with replaced_residual(adapter, layer, lambda x: sae(x)[0], where), \
                    replayed_layers(adapter, unchanged.hidden_states, layer + 1):
                spliced[idx] = adapter.masked_prediction(adapter.forward(masked, decode=False), sub, chosen)[0]
    return plain, spliced
