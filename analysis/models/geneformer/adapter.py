"""Geneformer adapter: a HF ``BertForMaskedLM`` loaded from a local directory, never from a hub implicitly.

transformers 5 silently ignores ``head_mask``, so every intervention and every attention read-out goes through
hooks at the named sites of :class:`SiteMap` (DESIGN.md section 4). Each adapter owns its own config object
(``attn_implementation`` is set per model, not shared).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import BertConfig, BertForMaskedLM

from ...io.cells import InputError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
KNOWN_WEIGHTS = Path(__file__).resolve().parents[4] / "shared/data/geneformer/configs/weights_lfs_pointers.tsv"


@dataclass(frozen=True)
class SiteMap:
    """Module paths of hook sites in a BERT encoder (layer index is 0-based)."""

    n_layers: int
    prefix: str = "bert.encoder.layer"

    def attention(self, layer: int) -> str:
        """Self-attention block; its forward input is the layer's hidden states ``[batch, seq, d_model]``."""
        return f"{self.prefix}.{layer}.attention.self"

    def head_output(self, layer: int) -> str:
        """Attention output projection; its *input* is the concatenated head outputs ``[batch, seq, heads*d_head]``."""
        return f"{self.prefix}.{layer}.attention.output.dense"

    def mlp_output(self, layer: int) -> str:
        """Feed-forward output projection (before the post-LN residual add)."""
        return f"{self.prefix}.{layer}.output.dense"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def identify_weights(weights: Path, known_table: Path = KNOWN_WEIGHTS) -> tuple[str, str | None]:
    """(sha256, official model name or None). A file with an official model's size but another hash is an error."""
    digest = sha256_file(weights)
    if not known_table.is_file():
        return digest, None
    known = pd.read_csv(known_table, sep="\t")
    match = known[(known["sha256"] == digest)]
    if len(match):
        return digest, str(match["model"].iloc[0])
    same_size = known[(known["file"] == weights.name) & (known["size_bytes"] == weights.stat().st_size)]
    if len(same_size):
        raise InputError(f"{weights} has the size of official {same_size['model'].iloc[0]} but sha256 {digest} "
                         "does not match the official hash: the download is corrupt or modified")
    return digest, None


class GeneformerAdapter:
    """A loaded Geneformer with its shapes and hook sites. ``forward`` takes ``[batch, seq]`` token ids."""

    family = "geneformer"

    def __init__(self, model: BertForMaskedLM, *, device: torch.device, name: str, checkpoint_sha256: str | None,
                 official_name: str | None = None):
        self.model = model.eval().to(device)
        self.device = device
        self.name = name
        self.checkpoint_sha256 = checkpoint_sha256
        self.official_name = official_name
        cfg = model.config
        self.n_layers = int(cfg.num_hidden_layers)
        self.n_heads = int(cfg.num_attention_heads)
        self.d_head = int(cfg.hidden_size // cfg.num_attention_heads)
        self.max_len = int(cfg.max_position_embeddings)
        self.sites = SiteMap(self.n_layers)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def attn_implementation(self) -> str:
        return self.model.config._attn_implementation

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "auto", random_init: bool = False, seed: int = 0,
                        attn_implementation: str = "sdpa") -> "GeneformerAdapter":
        """Load a local checkpoint directory (``config.json`` + weights). ``random_init`` reads only the config.

        Half precision (fp16) on CUDA, fp32 on CPU.
        """
        p = Path(path)
        if not (p / "config.json").is_file():
            raise InputError(f"{p} is not a model checkpoint directory (no config.json); pass the directory that "
                             "holds config.json and model.safetensors / pytorch_model.bin")
        dev = resolve_device(device)
        config = BertConfig.from_pretrained(p, local_files_only=True)
        if random_init:
            torch.manual_seed(seed)
            model = BertForMaskedLM(config)
            digest, official = None, None
        else:
            weights = next((p / f for f in WEIGHT_FILES if (p / f).is_file()), None)
            if weights is None:
                raise InputError(f"{p} has no weights file ({' or '.join(WEIGHT_FILES)}); pass --random-weights "
                                 "to run on random weights with this config")
            digest, official = identify_weights(weights)
            model = BertForMaskedLM.from_pretrained(p, config=config, local_files_only=True)
        model.set_attn_implementation(attn_implementation)
        if dev.type == "cuda":
            model = model.half()
        return cls(model, device=dev, name=official or p.name, checkpoint_sha256=digest, official_name=official)

    def module(self, site: str) -> torch.nn.Module:
        return self.model.get_submodule(site)

    @torch.inference_mode()
    def forward(self, input_ids: np.ndarray | torch.Tensor, attention_mask: np.ndarray | torch.Tensor,
                output_attentions: bool = False, output_hidden_states: bool = False):
        """Run the masked-LM on one batch; with ``output_attentions`` the model must be eager and return one
        ``[batch, heads, seq, seq]`` tensor per layer (asserted)."""
        ids = torch.as_tensor(input_ids, device=self.device)
        mask = torch.as_tensor(attention_mask, device=self.device)
        if output_attentions and self.attn_implementation != "eager":
            raise RuntimeError("output_attentions needs attn_implementation='eager' (sdpa returns no weights)")
        out = self.model(input_ids=ids, attention_mask=mask, output_attentions=output_attentions,
                         output_hidden_states=output_hidden_states)
        if output_attentions:
            assert len(out.attentions) == self.n_layers, "model returned attentions for fewer layers than it has"
        return out
