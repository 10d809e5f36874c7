"""Reusing the unablated pass: an intervention whose earliest hooked layer is ``l`` leaves layers ``0 .. l-1`` as
they were, so their outputs are the baseline's hidden states ``1 .. l`` on the same input, and only layers ``l ..
L-1`` need computing (on average about half of a sweep's forward cost; paper section 4.5's sweeps are dominated by
forward passes).

The replay is written once for every family through :meth:`analysis.models.base.SiteMap.layer`: each replayed
layer's ``forward`` is shadowed on the instance by one that returns the stored output, so the layer's own forward
hooks (transformers records ``hidden_states`` with them) still fire, and nothing inside the layer runs. Both
families' encoder layers return the residual stream as one tensor ``[batch, seq, d_model]``; the replay checks that
the stored tensor has the shape of the layer's input.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from ..models.base import ModelAdapter
from .interventions import InterventionSpec


def first_hooked_layer(specs: Sequence[InterventionSpec], n_layers: int) -> int:
    """The earliest layer an intervention touches; ``n_layers`` for none (the unablated pass itself)."""
    return min((spec.layer for spec in specs), default=n_layers)


@contextmanager
def replayed_layers(adapter: ModelAdapter, hidden_states: Sequence[torch.Tensor], start: int) -> Iterator[None]:
    """Within the block, layers ``0 .. start-1`` return ``hidden_states[1 .. start]`` (the unablated pass's
    outputs, L + 1 tensors ``[batch, seq, d_model]`` with the embeddings first) instead of computing. The caller
    guarantees the same input batch and that no intervention acts before ``start``."""
    modules = [adapter.module(adapter.sites.layer(layer)) for layer in range(start)]

    def replay(stored: torch.Tensor, layer: int):
        def forward(hidden: torch.Tensor, *_args, **_kwargs) -> torch.Tensor:
            if hidden.shape != stored.shape:
                raise RuntimeError(f"layer {layer} was given input {tuple(hidden.shape)} but its stored unablated "
                                   f"output is {tuple(stored.shape)}: the replay needs the batch it was made from")
            return stored
        return forward
    try:
        for layer, module in enumerate(modules):
            module.forward = replay(hidden_states[layer + 1], layer)
        yield
    finally:
        for module in modules:
            module.__dict__.pop("forward", None)    # the class's own forward again
