"""scGPT's whole-human model, written natively from its specification (``shared/design/scgpt.md`` section 1; Cui
et al. 2024). No scGPT code is used or copied: the ``scgpt`` package cannot be imported with torch 2.13, and its
torch layers run fused / nested-tensor fast paths and apply ``out_proj`` functionally, so hooks there never fire.

Forward (encoder inference, per cell ``[seq]`` tokens, ``<cls>`` first):

1. gene encoder: ``enc_norm(embedding(gene_ids))`` (``[b, s, d]``, kept for the MVC decoder);
2. value encoder: ``norm(linear2(relu(linear1(clamp(values, max=512)[..., None]))))``: the bin index as a float;
3. their sum enters ``L`` post-LN encoder layers (no positional encoding, so the model is permutation-equivariant
   over gene tokens): ``x = norm1(x + self_attn(x))``, ``x = norm2(x + linear2(relu(linear1(x))))``;
   attention is ``softmax(q k^T / sqrt(d_head) + key-padding mask) v`` from one packed ``Wqkv`` projection
   (rows ``[q | k | v]``, head-major within each block), then ``out_proj``;
4. no final LayerNorm; the cell embedding is the output at ``<cls>`` (position 0);
5. decoders: ``decoder`` (MLP -> one value per token, the masked-value prediction) and ``mvc_decoder``
   (``W(sigmoid(gene2query(gene_embedding))) . cell_embedding``: each gene's value from the cell embedding alone).

Module names equal the official checkpoint keys (``transformer_encoder.layers.N.self_attn.Wqkv.weight`` ...), so
``load_state_dict(strict=True)`` works on ``best_model.pt``; every sub-module is called as a module, so forward
hooks and pre-hooks fire on ``Wqkv``, ``out_proj``, ``linear1``, ``linear2`` and each layer. Attention runs on
PyTorch SDPA (``attn_implementation="sdpa"``) or an explicit softmax that can return the weights (``"eager"``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

VALUE_CLAMP = 512.0   # ContinuousValueEncoder's upper clamp (no lower clamp: pad -2 and mask -1 pass as floats)
LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class ScGPTConfig:
    """Architecture of a scGPT checkpoint (from its ``args.json`` and ``vocab.json``).

    ``d_hid`` is the feed-forward width (512 for whole-human, not 4 x d); ``n_flag_rows`` sizes the unused
    ``flag_encoder`` (0 = absent; read from the checkpoint, never assumed)."""

    vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 12
    d_hid: int = 512
    dropout: float = 0.2
    pad_id: int = 60694
    n_flag_rows: int = 2

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"embsize {self.d_model} is not divisible by nheads {self.n_heads}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


class GeneEncoder(nn.Module):
    def __init__(self, cfg: ScGPTConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.enc_norm = nn.LayerNorm(cfg.d_model, eps=LAYER_NORM_EPS)

    def forward(self, gene_ids: torch.Tensor) -> torch.Tensor:
        return self.enc_norm(self.embedding(gene_ids))


class ContinuousValueEncoder(nn.Module):
    def __init__(self, cfg: ScGPTConfig):
        super().__init__()
        self.linear1 = nn.Linear(1, cfg.d_model)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = values.unsqueeze(-1).clamp(max=VALUE_CLAMP).to(self.linear1.weight.dtype)
        return self.dropout(self.norm(self.linear2(self.activation(self.linear1(x)))))


class PackedSelfAttention(nn.Module):
    """Multi-head self-attention from one packed projection. ``forward(x [b, s, d], keep [b, s] bool, True = real
    key)`` -> ``[b, s, d]``; with ``attn_implementation = "eager"`` the weights ``[b, heads, s, s]`` of the last call
    are kept in ``last_weights`` when ``keep_weights`` is set (tests and diagnostics)."""

    def __init__(self, cfg: ScGPTConfig):
        super().__init__()
        self.n_heads, self.d_head, self.dropout = cfg.n_heads, cfg.d_head, cfg.dropout
        self.Wqkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_implementation = "sdpa"
        self.keep_weights = False
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        qkv = self.Wqkv(x).view(b, s, 3, self.n_heads, self.d_head)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))             # [b, h, s, d_head]
        p = self.dropout if self.training else 0.0
        if self.attn_implementation == "sdpa":
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :], dropout_p=p)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.d_head)
            scores = scores.masked_fill(~keep[:, None, None, :], torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=-1)
            if self.keep_weights:
                self.last_weights = weights.detach()
            ctx = torch.matmul(F.dropout(weights, p, self.training), v)
        return self.out_proj(ctx.transpose(1, 2).reshape(b, s, d))


class EncoderLayer(nn.Module):
    """Post-LN transformer encoder layer (ReLU feed-forward of width ``d_hid``)."""

    def __init__(self, cfg: ScGPTConfig):
        super().__init__()
        self.self_attn = PackedSelfAttention(cfg)
        self.linear1 = nn.Linear(cfg.d_model, cfg.d_hid)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(cfg.d_hid, cfg.d_model)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(cfg.dropout)
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.dropout2 = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout1(self.self_attn(x, keep)))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x))))))


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: ScGPTConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layers))


class ExprDecoder(nn.Module):
    """``fc``: Linear, LeakyReLU, Linear, LeakyReLU, Linear(d, 1): one predicted value per token."""

    def __init__(self, cfg: ScGPTConfig):
        super().__init__()
        d = cfg.d_model
        self.fc = nn.Sequential(nn.Linear(d, d), nn.LeakyReLU(), nn.Linear(d, d), nn.LeakyReLU(), nn.Linear(d, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).squeeze(-1)


class MVCDecoder(nn.Module):
    """Inner-product MVC decoder: ``pred[b, s] = W(sigmoid(gene2query(gene_emb)))[b, s] . cell_emb[b]``."""

    def __init__(self, cfg: ScGPTConfig):
        super().__init__()
        self.gene2query = nn.Linear(cfg.d_model, cfg.d_model)
        self.query_activation = nn.Sigmoid()
        self.W = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, cell_emb: torch.Tensor, gene_emb: torch.Tensor) -> torch.Tensor:
        query = self.W(self.query_activation(self.gene2query(gene_emb)))          # [b, s, d]
        return torch.bmm(query, cell_emb.unsqueeze(-1)).squeeze(-1)


@dataclass
class ScGPTOutput:
    """``output`` ``[b, s, d]`` final encoder states; ``cell_embedding`` ``[b, d]`` = ``output[:, 0]``;
    ``mlm_output`` / ``mvc_output`` ``[b, s]`` predicted values; ``hidden_states``: L + 1 tensors ``[b, s, d]`` (the
    embedding sum, then each layer's output) when requested."""

    output: torch.Tensor
    cell_embedding: torch.Tensor
    mlm_output: torch.Tensor
    mvc_output: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


class ScGPTModel(nn.Module):
    """The whole-human architecture (module doc). ``forward(gene_ids [b, s] long, values [b, s] float, keep [b, s]
    bool)`` where ``keep`` is True at real tokens (``gene_ids != pad``)."""

    def __init__(self, cfg: ScGPTConfig):
        super().__init__()
        self.config = cfg
        self.encoder = GeneEncoder(cfg)
        self.value_encoder = ContinuousValueEncoder(cfg)
        self.transformer_encoder = TransformerEncoder(cfg)
        self.decoder = ExprDecoder(cfg)
        self.mvc_decoder = MVCDecoder(cfg)
        if cfg.n_flag_rows:
            self.flag_encoder = nn.Embedding(cfg.n_flag_rows, cfg.d_model)  # generative-training flag; unused here

    def set_attn_implementation(self, name: str) -> None:
        if name not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {name!r}")
        for layer in self.transformer_encoder.layers:
            layer.self_attn.attn_implementation = name

    def forward(self, gene_ids: torch.Tensor, values: torch.Tensor, keep: torch.Tensor,
                output_hidden_states: bool = False) -> ScGPTOutput:
        keep = keep.bool()
        gene_emb = self.encoder(gene_ids)
        x = gene_emb + self.value_encoder(values)
        hidden = [x] if output_hidden_states else None
        for layer in self.transformer_encoder.layers:
            x = layer(x, keep)
            if hidden is not None:
                hidden.append(x)
        cell = x[:, 0]
        return ScGPTOutput(x, cell, self.decoder(x), self.mvc_decoder(cell, gene_emb),
                           tuple(hidden) if hidden is not None else None)
