"""Masked-value pretraining of a tiny scGPT-architecture model, for the embedded default.

scGPT's objective (Cui et al. 2024; whole-human ``args.json``: ``training_tasks`` both, ``MVC`` true, ``mask_ratio``
[0.25, 0.5, 0.75]): in each batch a fraction of the gene positions (drawn in turn from ``mask_ratio``) has its input
value replaced by ``mask_value`` (-1); the loss is the masked-value MSE of the expression decoder plus that of the
MVC decoder (each gene's value predicted from the cell embedding alone), both on the masked positions. The
generative (gen-token) half of scGPT's training is not reproduced: it trains the same encoder weights through a
parameter-free cross-attention that inference never uses. Cells are tokenised in ``panel`` mode over every
vocabulary gene (zeros included), the input the explorer's attention work gives the model.

:func:`train_tiny` saves the model in scGPT's release layout: ``args.json`` (the official keys, tiny sizes),
``vocab.json`` (the cells' gene symbols, then ``<pad>``, ``<cls>``, ``<eoc>`` as in whole-human) and
``best_model.pt``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...config import TrainConfig
from ...io.cells import CellData
from ..base import TokenizedCells
from .checkpoint import CLS, PAD, config_from_args, save_release
from .model import ScGPTModel
from .tokenizer import ScGPTTokenizer

log = logging.getLogger(__name__)
MASK_RATIOS = (0.25, 0.5, 0.75)


def tiny_args(cfg: TrainConfig) -> dict:
    """``args.json`` of the embedded model: whole-human's keys and conventions at the configured size. Dropout is 0
    (whole-human used 0.2): scGPT has one dropout for every sub-module, and attention dropout sends SDPA down a path
    that materialises the attention (an epoch of the embedded default 22.4 s -> 8.6 s on this CPU)."""
    return {"embsize": cfg.hidden_size, "nheads": cfg.n_heads, "nlayers": cfg.n_layers, "d_hid": cfg.intermediate_size,
            "dropout": 0.0, "n_bins": 51, "max_seq_len": 1200, "pad_token": PAD, "pad_value": -2, "mask_value": -1,
            "input_style": "binned", "input_emb_style": "continuous", "training_tasks": "pcpt", "MVC": True,
            "mask_ratio": list(MASK_RATIOS), "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "lr": cfg.learning_rate, "seed": cfg.seed, "embedded": True}


def masked_value_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """scGPT's ``masked_mse_loss``: ``sum((pred - target)^2 * mask) / sum(mask)`` over ``[b, s]``."""
    mask = mask.float()
    return (((pred - target) ** 2) * mask).sum() / mask.sum().clamp(min=1)


def train_values(tokens: TokenizedCells, args: dict, vocab: dict[str, int], cfg: TrainConfig,
                 progress: bool = True) -> tuple[ScGPTModel, list[dict]]:
    """Train from scratch on ``tokens``; returns the model (eval mode) and a per-epoch log of both losses."""
    torch.manual_seed(cfg.seed)
    model = ScGPTModel(config_from_args(args, vocab, n_flag_rows=2))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    steps = cfg.epochs * int(np.ceil(tokens.n_cells / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.learning_rate, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    history, step = [], 0
    model.train()
    for epoch in range(cfg.epochs):
        t0, mlm, mvc = time.perf_counter(), [], []
        order = rng.permutation(tokens.n_cells)
        for start in range(0, order.size, cfg.batch_size):
            sub = tokens.subset(order[start:start + cfg.batch_size])
            ids = torch.as_tensor(sub.input_ids)
            values = torch.as_tensor(sub.values)
            genes = torch.as_tensor(sub.gene_positions())
            ratio = MASK_RATIOS[step % len(MASK_RATIOS)]
            masked = (torch.rand(ids.shape, generator=gen) < ratio) & genes
            out = model(ids, torch.where(masked, float(args["mask_value"]), values), torch.as_tensor(sub.attention_mask))
            loss_mlm = masked_value_loss(out.mlm_output, values, masked)
            loss_mvc = masked_value_loss(out.mvc_output, values, masked)
            opt.zero_grad()
            (loss_mlm + loss_mvc).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            mlm.append(loss_mlm.item())
            mvc.append(loss_mvc.item())
        history.append({"epoch": epoch, "masked_value_mse": float(np.mean(mlm)), "mvc_mse": float(np.mean(mvc)),
                        "seconds": time.perf_counter() - t0})
        if progress:
            log.info("pretrain epoch %d masked-value MSE %.3f MVC MSE %.3f (%.1fs)", epoch, history[-1]["masked_value_mse"],
                     history[-1]["mvc_mse"], history[-1]["seconds"])
    return model.eval(), history


def train_tiny(cells: CellData, cfg: TrainConfig, directory: Path, progress: bool = True) -> list[dict]:
    """Train a tiny scGPT-architecture model on ``cells`` and save it to ``directory`` in scGPT's release layout (module
    doc). Returns the per-epoch training log."""
    symbols = list(dict.fromkeys(str(s) for s in cells.raw_symbols))
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({PAD: len(vocab), CLS: len(vocab) + 1, "<eoc>": len(vocab) + 2})
    args = tiny_args(cfg)
    tokenizer = ScGPTTokenizer(vocab, n_bins=args["n_bins"], max_len=args["max_seq_len"], pad_value=args["pad_value"],
                               cls_value=args["pad_value"], mode="panel", seed=cfg.seed, source="embedded vocab")
    genes = tokenizer.vocabulary_genes(cells)
    tokens = tokenizer.tokenize(cells, panel=pd.DataFrame({"gene_index": np.arange(len(genes))}))
    log.info("training the embedded tiny scGPT on %d cells (%d genes)", tokens.n_cells, len(genes))
    model, history = train_values(tokens, args, vocab, cfg, progress=progress)
    save_release(model, args, vocab, directory)
    return history
