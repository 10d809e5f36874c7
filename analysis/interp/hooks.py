"""Interventions as PyTorch hooks at named sites (DESIGN.md section 4; paper section 4.5, Supplementary Note 14.4).

transformers 5 accepts and silently ignores ``head_mask``, so head ablation is done where the heads' outputs
meet: the input of ``attention.output.dense`` is the concatenation of the head outputs ``[batch, seq, H*d]``.

- ``zero_head``: forward pre-hook zeroing the heads' slices of that input (Michel et al. head masking).
- ``mean_head``: the same slices replaced by each head's dataset-mean output (mean ablation).
- ``uniform_head``: forward hook on ``attention.self`` recomputing the heads' outputs with uniform attention
  over the non-padded keys, keeping the value projection (the paper's attention replacement, 1/n weights).
- ``zero_mlp``: forward hook on the feed-forward ``output.dense`` returning zeros; BERT is post-LN, so the
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

from .interventions import InterventionSpec
from ..models.geneformer.adapter import GeneformerAdapter

@dataclass
class HookReport:
    fired: Counter = field(default_factory=Counter)


def _head_view(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    return x.view(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)


@contextmanager
def hooked(adapter: GeneformerAdapter, specs: Sequence[InterventionSpec], *,
           head_means: dict[int, torch.Tensor] | None = None) -> Iterator[HookReport]:
    """Install ``specs`` on ``adapter.model`` for the duration of the block. ``head_means[layer]``:
    ``[heads, d_head]`` dataset-mean head outputs, required by ``mean_head``."""
    report = HookReport()
    state: dict = {}
    handles = []

    def capture_mask(_module, args, kwargs):
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        state["mask"] = mask if mask is not None else torch.ones(ids.shape, device=ids.device)

    def add(module: torch.nn.Module, fn, pre: bool = False, with_kwargs: bool = False):
        if pre:
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=with_kwargs))
        else:
            handles.append(module.register_forward_hook(fn, with_kwargs=with_kwargs))

    try:
        add(adapter.model, capture_mask, pre=True, with_kwargs=True)
        for spec in specs:
            if spec.layer < 0 or spec.layer >= adapter.n_layers or any(h >= adapter.n_heads for h in spec.heads):
                raise ValueError(f"{spec.key} is outside the model ({adapter.n_layers} layers x {adapter.n_heads} heads)")
            heads = list(spec.heads)
            if spec.kind in ("zero_head", "mean_head"):
                if spec.kind == "mean_head" and (head_means is None or spec.layer not in head_means):
                    raise ValueError(f"{spec.key} needs dataset-mean head outputs for layer {spec.layer}")

                def pre_hook(_m, args, spec=spec, heads=heads):
                    x = args[0].clone()
                    view = _head_view(x, adapter.n_heads)
                    if spec.kind == "zero_head":
                        view[..., heads, :] = 0
                    else:
                        view[..., heads, :] = head_means[spec.layer][heads].to(x.dtype)
                    report.fired[spec.key] += 1
                    return (x,) + tuple(args[1:])
                add(adapter.module(adapter.sites.head_output(spec.layer)), pre_hook, pre=True)
            elif spec.kind == "uniform_head":
                def uniform_hook(module, args, kwargs, output, spec=spec, heads=heads):
                    hidden = args[0] if args else kwargs["hidden_states"]
                    value = _head_view(module.value(hidden), adapter.n_heads)          # [b, s, H, d]
                    weights = state["mask"].to(value.dtype)
                    weights = weights / weights.sum(dim=1, keepdim=True)               # [b, s] uniform on real keys
                    mixed = torch.einsum("bs,bshd->bhd", weights, value)               # [b, H, d]
                    out = output[0].clone()
                    view = _head_view(out, adapter.n_heads)
                    view[:, :, heads, :] = mixed[:, None, heads, :]
                    attn = output[1]
                    if attn is not None:
                        attn = attn.clone()
                        attn[:, heads] = weights[:, None, None, :].to(attn.dtype)
                    report.fired[spec.key] += 1
                    return (out, attn) + tuple(output[2:])
                add(adapter.module(adapter.sites.attention(spec.layer)), uniform_hook, with_kwargs=True)
            else:
                def mlp_hook(_m, _args, output, spec=spec):
                    report.fired[spec.key] += 1
                    return torch.zeros_like(output)
                add(adapter.module(adapter.sites.mlp_output(spec.layer)), mlp_hook)
        yield report
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def head_output_means(adapter: GeneformerAdapter, input_ids: np.ndarray, attention_mask: np.ndarray,
                      batch_size: int = 8) -> dict[int, torch.Tensor]:
    """Per layer, ``[heads, d_head]`` mean of each head's output over all real (non-pad) positions of the cells."""
    sums = {layer: None for layer in range(adapter.n_layers)}
    count = 0
    captured: dict[int, torch.Tensor] = {}
    handles = [adapter.module(adapter.sites.head_output(layer)).register_forward_pre_hook(
        lambda _m, args, layer=layer: captured.__setitem__(layer, args[0])) for layer in range(adapter.n_layers)]
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            ids, mask = input_ids[start:start + batch_size], attention_mask[start:start + batch_size]
            adapter.forward(ids, mask)
            m = torch.as_tensor(mask, device=adapter.device).bool()
            count += int(m.sum())
            for layer, x in captured.items():
                s = _head_view(x[m].double(), adapter.n_heads).sum(0)
                sums[layer] = s if sums[layer] is None else sums[layer] + s
    finally:
        for h in handles:
            h.remove()
    return {layer: (s / count).float() for layer, s in sums.items()}
