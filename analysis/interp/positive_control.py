"""A planted-circuit positive control: the control the paper names as missing in its limitations (section 3).

A variant of a model in which one head is trained to carry the reference (simulated) network, and a behaviour
depends on that head, so the framework can be checked to (i) rank that head first against the network and
(ii) detect its causal role by ablation while random-head ablations show none.

- Behaviour, "target recall": at every TF position, the masked-LM output distribution should put its mass on
  the TF's reference targets present in the cell; per cell, the mean over TF positions of
  ``-mean_{t in targets} log softmax(logits)[t]`` (lower is better). It is defined for any model and
  reference, and is one of the ablation read-outs.
- Training objective (documented choice): only the planted head's parameters are trainable (its rows of the
  query / key / value projections and its columns of the attention output projection; gradients outside the
  head's slice are masked), minimising target-recall loss plus an attention-supervision term (cross-entropy
  of the head's attention from each TF position against the uniform distribution over the TF's present
  targets). Every other weight is the original model's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..models.base import ModelAdapter, ModelOutput, TokenizedCells
from .attention import capture_projections

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetSets:
    """Per cell: ``rows`` (cell index, TF position) of every TF token with at least one reference target in the
    cell, and ``targets`` ``[n_rows, vocab]`` multi-hot of those targets' token ids; ``target_pos`` ``[n_rows,
    seq]`` multi-hot of their positions (for attention supervision)."""

    cell: np.ndarray
    position: np.ndarray
    targets: np.ndarray
    target_pos: np.ndarray


def target_sets(tokens: TokenizedCells, edges: set[tuple[str, str]], vocab_size: int) -> TargetSets:
    """Locate TF tokens and their present reference targets (``edges``: (TF symbol, target symbol))."""
    symbols = tokens.genes["symbol"].to_numpy()
    token_ids = tokens.genes["token_id"].to_numpy()
    by_tf: dict[str, set[str]] = {}
    for tf, target in edges:
        by_tf.setdefault(tf, set()).add(target)
    cells, positions, multi, pos_multi = [], [], [], []
    width = tokens.input_ids.shape[1]
    for c in range(tokens.n_cells):
        genes = tokens.gene_index[c]
        present = {symbols[g]: p for p, g in enumerate(genes) if g >= 0}
        for tf, p in present.items():
            hits = [present[t] for t in by_tf.get(tf, ()) if t in present and t != tf]
            if hits:
                row = np.zeros(vocab_size, dtype=np.float32)
                row[token_ids[genes[hits]]] = 1
                prow = np.zeros(width, dtype=np.float32)
                prow[hits] = 1
                cells.append(c)
                positions.append(p)
                multi.append(row)
                pos_multi.append(prow)
    if not cells:
        raise ValueError("no cell contains a reference TF together with one of its targets")
    return TargetSets(np.array(cells), np.array(positions), np.stack(multi), np.stack(pos_multi))


def reference_targets(tokens: TokenizedCells, edges: set[tuple[str, str]], vocab_size: int) -> TargetSets | None:
    """:func:`target_sets` of a reference, or None when no cell has a reference TF together with one of its
    targets (the target-recall read-out is then skipped)."""
    try:
        return target_sets(tokens, edges, vocab_size)
    except ValueError:
        return None


def target_recall_loss(adapter: ModelAdapter, out: ModelOutput, sets: TargetSets, cells: np.ndarray) -> np.ndarray:
    """Per cell of the batch (``cells``: original indices in batch order), the behaviour loss (NaN when the cell
    has no TF with a present target), from ``out``'s token logits at the TF positions only
    (:meth:`~analysis.models.base.ModelAdapter.token_logits_at`)."""
    out_loss = np.full(len(cells), np.nan)
    where = {c: i for i, c in enumerate(cells)}
    keep = np.array([c in where for c in sets.cell])
    if not keep.any():
        return out_loss
    dev = adapter.device
    b = torch.as_tensor([where[c] for c in sets.cell[keep]], device=dev)
    p = torch.as_tensor(sets.position[keep], device=dev)
    multi = torch.as_tensor(sets.targets[keep], device=dev)
    logp = torch.log_softmax(adapter.token_logits_at(out, b, p).float(), dim=-1)
    per_row = -(logp * multi).sum(-1) / multi.sum(-1)
    rows = b.cpu().numpy()
    vals = per_row.detach().cpu().numpy()
    for i in np.unique(rows):
        out_loss[i] = vals[rows == i].mean()
    return out_loss


def plant_head(adapter: ModelAdapter, tokens: TokenizedCells, sets: TargetSets, *, layer: int, head: int,
               epochs: int = 30, batch_size: int = 16, learning_rate: float = 3e-2, attention_weight: float = 1.0,
               seed: int = 0) -> list[dict]:
    """Train the planted head in place (see module doc); returns the per-epoch loss log. The adapter must predict
    gene tokens (``predicts_tokens``): the behaviour is a distribution over the vocabulary."""
    if not adapter.predicts_tokens:
        raise ValueError(f"planting needs a model that predicts gene tokens; {adapter.family} predicts values")
    torch.manual_seed(seed)
    model = adapter.model
    d = adapter.d_head
    trainable = adapter.head_parameters(layer, head)
    for p in model.parameters():
        p.requires_grad_(False)
    hooks = []
    for p, m in trainable.items():
        p.requires_grad_(True)
        hooks.append(p.register_hook(lambda g, m=m.to(p.device): g * m))
    opt = torch.optim.Adam(list(trainable), lr=learning_rate)
    rng = np.random.default_rng(seed)
    history = []
    model.eval()  # no dropout; gradients still flow
    try:
        for epoch in range(epochs):
            losses = []
            order = rng.permutation(tokens.n_cells)
            for start in range(0, tokens.n_cells, batch_size):
                idx = np.sort(order[start:start + batch_size])
                sub = tokens.subset(idx)
                keep = np.isin(sets.cell, idx)
                if not keep.any():
                    continue
                with capture_projections(adapter) as cap:
                    out = adapter.forward(sub, grad=True)
                    q, k = cap[(layer, "query")], cap[(layer, "key")]
                where = {c: i for i, c in enumerate(idx)}
                b = torch.as_tensor([where[c] for c in sets.cell[keep]])
                p = torch.as_tensor(sets.position[keep])
                multi = torch.as_tensor(sets.targets[keep])
                behaviour = -(torch.log_softmax(out.token_logits[b, p], -1) * multi).sum(-1) / multi.sum(-1)
                qh = q[b, p, head * d:(head + 1) * d]                                   # [rows, d]
                kh = k[b, :, head * d:(head + 1) * d]                                   # [rows, seq, d]
                scores = torch.einsum("rd,rsd->rs", qh, kh) * d ** -0.5
                valid = torch.as_tensor(sub.attention_mask, device=adapter.device)[b].bool()
                logattn = torch.log_softmax(scores.masked_fill(~valid, torch.finfo(scores.dtype).min), -1)
                tpos = torch.as_tensor(sets.target_pos[keep][:, : sub.input_ids.shape[1]])
                supervision = -(logattn * tpos).sum(-1) / tpos.sum(-1)
                loss = behaviour.mean() + attention_weight * supervision.mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append((behaviour.mean().item(), supervision.mean().item()))
            history.append({"epoch": epoch, "target_recall_loss": float(np.mean([x[0] for x in losses])),
                            "attention_supervision": float(np.mean([x[1] for x in losses]))})
            log.info("planting L%dH%d epoch %d: %s", layer, head, epoch, history[-1])
    finally:
        for h in hooks:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(False)
    return history
