"""Interventions as PyTorch hooks at an adapter's named sites (DESIGN.md section 4; paper section 4.5, Supplementary
Note 14.4), written once for every model family (:class:`analysis.models.base.SiteMap`).

transformers 5 accepts and silently ignores ``head_mask``, and scGPT has no head mask at all, so head ablation is
done where the heads' outputs meet: the input of the attention output projection, the concatenation of the head
outputs ``[batch, seq, H*d]``.

- ``zero_head``: forward pre-hook zeroing the heads' slices of that input (Michel et al. head masking).
- ``mean_head``: the same slices replaced by each head's dataset-mean output (mean ablation).
- ``uniform_head``: the same slices replaced by the heads' outputs under uniform attention over the non-padded keys,
  i.e. the mean of the head's value vectors (captured by a forward hook on the value projection); the paper's
  attention replacement (1/n weights).
- ``zero_mlp``: forward hook on the second feed-forward linear returning zeros; both families are post-LN, so the
  block's LayerNorm still runs on the attention output.

:func:`hooked` installs any composition of specs and removes every handle in ``finally``; the returned
:class:`HookReport` counts how often each hook fired, so a silent no-op is caught.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from ..models.base import ModelAdapter, TokenizedCells
from .interventions import InterventionSpec


@dataclass
class HookReport:
    fired: Counter = field(default_factory=Counter)


def _head_view(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    return x.view(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)


def _check(adapter: ModelAdapter, spec: InterventionSpec, head_means: dict | None) -> None:
    if spec.layer < 0 or spec.layer >= adapter.n_layers or any(h >= adapter.n_heads for h in spec.heads):
        raise ValueError(f"{spec.key} is outside the model ({adapter.n_layers} layers x {adapter.n_heads} heads)")
    if spec.kind == "mean_head" and (head_means is None or spec.layer not in head_means):
        raise ValueError(f"{spec.key} needs dataset-mean head outputs for layer {spec.layer}")


@contextmanager
def hooked(adapter: ModelAdapter, specs: Sequence[InterventionSpec], *,
           head_means: dict[int, torch.Tensor] | None = None) -> Iterator[HookReport]:
    """Install ``specs`` on ``adapter.model`` for the duration of the block. ``head_means[layer]``:
    ``[heads, d_head]`` dataset-mean head outputs, required by ``mean_head``."""
    report = HookReport()
    state: dict = {}
    handles = []
    try:
        for spec in specs:
            _check(adapter, spec, head_means)
        if any(s.kind == "uniform_head" for s in specs):
            handles.append(adapter.module(adapter.sites.entry).register_forward_pre_hook(
                lambda _m, args, kwargs: state.__setitem__("keep", adapter.key_mask(args, kwargs)), with_kwargs=True))
        for spec in specs:
            heads = list(spec.heads)
            if spec.kind == "zero_mlp":
                def mlp_hook(_m, _args, output, spec=spec):
                    report.fired[spec.key] += 1
                    return torch.zeros_like(output)
                handles.append(adapter.module(adapter.sites.mlp_output(spec.layer)).register_forward_hook(mlp_hook))
                continue
            if spec.kind == "uniform_head":
                site = adapter.sites.value(spec.layer)
                handles.append(adapter.module(site.module).register_forward_hook(
                    lambda _m, _a, out, site=site, layer=spec.layer: state.__setitem__(("value", layer),
                                                                                      site.take(out))))

            def pre_hook(_m, args, spec=spec, heads=heads):
                x = args[0].clone()
                view = _head_view(x, adapter.n_heads)
                if spec.kind == "zero_head":
                    view[..., heads, :] = 0
                elif spec.kind == "mean_head":
                    view[..., heads, :] = head_means[spec.layer][heads].to(x.dtype)
                else:
                    value = _head_view(state[("value", spec.layer)], adapter.n_heads)     # [b, s, H, d]
                    weights = state["keep"].to(value.dtype)
                    weights = weights / weights.sum(dim=1, keepdim=True)                   # [b, s] uniform on real keys
                    mixed = torch.einsum("bs,bshd->bhd", weights, value)                   # [b, H, d]
                    view[:, :, heads, :] = mixed[:, None, heads, :]
                report.fired[spec.key] += 1
                return (x,) + tuple(args[1:])
            handles.append(adapter.module(adapter.sites.head_output(spec.layer)).register_forward_pre_hook(pre_hook))
        yield report
    finally:
        for h in handles:
            h.remove()


def head_output_means(adapter: ModelAdapter, tokens: TokenizedCells, batch_size: int = 8) -> dict[int, torch.Tensor]:
    """Per layer, ``[heads, d_head]`` mean of each head's output over all real (non-pad) positions of the cells."""
    sums = {layer: None for layer in range(adapter.n_layers)}
    count = 0
    captured: dict[int, torch.Tensor] = {}
    handles = [adapter.module(adapter.sites.head_output(layer)).register_forward_pre_hook(
        lambda _m, args, layer=layer: captured.__setitem__(layer, args[0])) for layer in range(adapter.n_layers)]
    try:
        for start in range(0, tokens.n_cells, batch_size):
            sub = tokens.subset(np.arange(start, min(start + batch_size, tokens.n_cells)))
            adapter.forward(sub)
            m = adapter.as_tensor(sub.attention_mask).bool()
            count += int(m.sum())
            for layer, x in captured.items():
                s = _head_view(x[m].double(), adapter.n_heads).sum(0)
                sums[layer] = s if sums[layer] is None else sums[layer] + s
    finally:
        for h in handles:
            h.remove()
    return {layer: (s / count).float() for layer, s in sums.items()}
