"""Masked-gene pretraining of a Geneformer-architecture ``BertForMaskedLM`` on rank-value tokens.

Geneformer's objective (Theodoris et al. 2023): mask 15% of a cell's gene tokens (80% -> ``<mask>``,
10% -> a random gene, 10% unchanged) and predict the masked genes from the rest of the ranked transcriptome.
Used to train the embedded default's tiny model on simulated cells in a few CPU minutes (:func:`train_tiny`), saved
in the file formats of a real Geneformer release (HF checkpoint directory, token / gene-median / gene-name dictionary
pickles) so the rest of the pipeline treats it exactly like a real checkpoint.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from transformers import BertConfig, BertForMaskedLM

from ...config import TrainConfig
from ...io.cells import CellData
from ...io.expression import cp10k
from ..base import TokenizedCells
from .tokenizer import MASK, PAD, GeneformerDictionaries, save_dictionaries, tokenize

log = logging.getLogger(__name__)
IGNORE = -100


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, *, mask_id: int, n_special: int,
                vocab_size: int, probability: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT/Geneformer masking of ``[batch, seq]`` ids; returns (masked ids, labels with -100 off the masked set)."""
    is_gene = (attention_mask > 0) & (input_ids >= n_special)
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & is_gene
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    roll = torch.rand(input_ids.shape, generator=generator)
    masked = input_ids.clone()
    masked[chosen & (roll < 0.8)] = mask_id
    random_ids = torch.randint(n_special, vocab_size, input_ids.shape, generator=generator)
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[swap] = random_ids[swap]
    return masked, labels


def build_model(cfg: TrainConfig, vocab_size: int, pad_id: int) -> BertForMaskedLM:
    """Geneformer V1 architecture (post-LN BERT, ReLU, absolute positions) at the configured size. No attention
    dropout: with it, SDPA falls back to a path that materialises the attention, which was 55% of a training step on
    this CPU (an epoch of the embedded default 14.7 s -> 6.8 s); hidden dropout stays."""
    torch.manual_seed(cfg.seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.n_layers,
                        num_attention_heads=cfg.n_heads, intermediate_size=cfg.intermediate_size,
                        hidden_act="relu", max_position_embeddings=cfg.max_len, pad_token_id=pad_id,
                        attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.02, layer_norm_eps=1e-12)
    return BertForMaskedLM(config)


def train_mlm(tokens: TokenizedCells, dicts: GeneformerDictionaries, cfg: TrainConfig,
              progress: bool = True) -> tuple[BertForMaskedLM, list[dict]]:
    """Train from scratch; returns the model (eval mode) and a per-epoch log of loss and masked accuracy."""
    n_special = sum(1 for k in dicts.token if k.startswith("<"))
    vocab = max(dicts.token.values()) + 1
    model = build_model(cfg, vocab, dicts.pad_id)
    model.set_attn_implementation("sdpa")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    steps = cfg.epochs * int(np.ceil(tokens.n_cells / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.learning_rate, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    history = []
    model.train()
    for epoch in range(cfg.epochs):
        t0, losses, correct, total = time.perf_counter(), [], 0, 0
        order = rng.permutation(tokens.n_cells)
        for start in range(0, order.size, cfg.batch_size):
            sub = tokens.subset(order[start:start + cfg.batch_size])
            ids = torch.as_tensor(sub.input_ids)
            att = torch.as_tensor(sub.attention_mask)
            masked, labels = mask_tokens(ids, att, mask_id=dicts.mask_id, n_special=n_special, vocab_size=vocab,
                                         probability=cfg.mask_probability, generator=gen)
            out = model(input_ids=masked, attention_mask=att, labels=labels)
            opt.zero_grad()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(out.loss.item())
            hit = labels != IGNORE
            correct += int((out.logits.argmax(-1)[hit] == labels[hit]).sum())
            total += int(hit.sum())
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "masked_accuracy": correct / max(total, 1),
                        "seconds": time.perf_counter() - t0})
        if progress:
            log.info("pretrain epoch %d loss %.3f acc %.3f (%.1fs)", epoch, history[-1]["loss"],
                     history[-1]["masked_accuracy"], history[-1]["seconds"])
    return model.eval(), history


def gene_medians(counts: sp.csr_matrix, n_counts: np.ndarray) -> np.ndarray:
    """Geneformer's normalisation factors: per gene, the median of its non-zero CP10k values over cells."""
    norm = sp.csc_matrix(cp10k(counts, n_counts))
    return np.array([np.median(norm.data[norm.indptr[j]:norm.indptr[j + 1]]) if norm.indptr[j + 1] > norm.indptr[j]
                     else 1.0 for j in range(norm.shape[1])])


def train_tiny(cells: CellData, cfg: TrainConfig, directory: Path, progress: bool = True) -> list[dict]:
    """Train a tiny Geneformer-architecture model on ``cells`` and save it to ``directory`` as a Geneformer release:
    dictionaries built from the cells (token ids in data order after ``<pad>``, ``<mask>``; medians of the cells'
    CP10k), ``config.json`` + ``model.safetensors``. Returns the per-epoch training log."""
    medians = gene_medians(cells.counts, cells.obs["n_counts"].to_numpy(dtype=float))
    token = {PAD: 0, MASK: 1, **{g: i + 2 for i, g in enumerate(cells.gene_ids)}}
    dicts = GeneformerDictionaries(token=token, median=dict(zip(cells.gene_ids, medians.tolist())),
                                   name_to_id=dict(zip(cells.raw_symbols, cells.gene_ids)), source=str(directory))
    tokens = tokenize(cells, dicts, cfg.max_len)
    log.info("training the embedded tiny Geneformer on %d cells (%d genes)", tokens.n_cells, len(token) - 2)
    model, history = train_mlm(tokens, dicts, cfg, progress=progress)
    model.save_pretrained(directory)
    save_dictionaries(dicts, directory, "sim")
    return history
