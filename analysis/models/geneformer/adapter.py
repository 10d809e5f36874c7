"""Geneformer adapter: a HF ``BertForMaskedLM`` loaded from a local directory, never from a hub implicitly.

transformers 5 silently ignores ``head_mask``, so every intervention and every attention read-out goes through
hooks at the sites of :class:`GeneformerSites` (DESIGN.md section 4). Each adapter owns its own config object
(``attn_implementation`` is set per model, not shared). Weights whose size matches an official release are checked
against its sha256. The native cell embedding is Geneformer's default: the mean over gene tokens of the second-to-last
hidden state. The behaviour read-out is the masked-gene cross-entropy and accuracy (all masked tokens ``<mask>``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import BertConfig, BertForMaskedLM

from ...errors import InputError
from ...io.artifacts import sha256_path
from ..base import ModelAdapter, ModelOutput, Site, SiteMap, TokenizedCells, resolve_device
from .tokenizer import GeneformerTokenizer, check_against_checkpoint, load_dictionaries

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
KNOWN_WEIGHTS = Path(__file__).resolve().parents[4] / "shared/data/geneformer/configs/weights_lfs_pointers.tsv"
IGNORE = -100


class GeneformerSites(SiteMap):
    """BERT encoder sites: separate query / key / value projections under ``attention.self``."""

    prefix = "bert.encoder.layer"
    entry = "bert"

    def query(self, layer: int) -> Site:
        return Site(f"{self.prefix}.{layer}.attention.self.query")

    def key(self, layer: int) -> Site:
        return Site(f"{self.prefix}.{layer}.attention.self.key")

    def value(self, layer: int) -> Site:
        return Site(f"{self.prefix}.{layer}.attention.self.value")

    def head_output(self, layer: int) -> str:
        return f"{self.prefix}.{layer}.attention.output.dense"

    def mlp_output(self, layer: int) -> str:
        return f"{self.prefix}.{layer}.output.dense"


def identify_weights(weights: Path, known_table: Path = KNOWN_WEIGHTS) -> tuple[str, str | None]:
    """(sha256, official model name or None). A file with an official model's size but another hash is an error."""
    digest = sha256_path(weights)
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


def read_config(directory: Path) -> BertConfig:
    """The checkpoint's ``config.json`` as a BERT config; another model type or an inconsistent shape is refused."""
    path = directory / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable JSON config ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("model_type") != "bert":
        found = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        raise InputError(f"{path} has model_type {found!r}: Geneformer checkpoints are BERT (model_type 'bert')")
    try:
        config = BertConfig.from_pretrained(directory, local_files_only=True)
    except Exception as exc:  # transformers raises several types on a malformed config
        raise InputError(f"{path} is not a valid BERT config ({type(exc).__name__}: {exc})") from exc
    if config.hidden_size % config.num_attention_heads:
        raise InputError(f"{path}: hidden_size {config.hidden_size} is not divisible by num_attention_heads "
                         f"{config.num_attention_heads}")
    return config


class GeneformerAdapter(ModelAdapter):
    """A loaded Geneformer (module doc)."""

    family = "geneformer"
    native_embedding = "mean_penultimate"
    readout_labels = {"mlm_loss": "masked-gene cross-entropy", "mlm_accuracy": "masked-gene top-1 accuracy",
                      "output_cosine_distance": "cosine distance of the output logits (mean over tokens)"}
    predicts_tokens = True
    attention_convention = ("Geneformer: rank-value tokens, so a gene's position is its expression rank in the cell "
                            "and genes outside the top of the ranking are absent; Geneformer's own network analyses "
                            "use attention between genes without a fixed direction, so compare the three directions.")

    def __init__(self, model: BertForMaskedLM, *, device: torch.device, name: str, checkpoint_sha256: str | None,
                 official_name: str | None = None, checkpoint_dir: Path | None = None):
        cfg = model.config
        self.checkpoint_dir = checkpoint_dir
        super().__init__(model, device=device, name=name, checkpoint_sha256=checkpoint_sha256,
                         official_name=official_name, n_layers=int(cfg.num_hidden_layers),
                         n_heads=int(cfg.num_attention_heads), d_model=int(cfg.hidden_size),
                         max_len=int(cfg.max_position_embeddings), vocab_size=int(cfg.vocab_size),
                         sites=GeneformerSites(int(cfg.num_hidden_layers), int(cfg.hidden_size)))

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
        config = read_config(p)
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
            try:
                model = BertForMaskedLM.from_pretrained(p, config=config, local_files_only=True)
            except Exception as exc:  # corrupt or truncated weights
                raise InputError(f"{weights} could not be loaded as this config's weights "
                                 f"({type(exc).__name__}: {exc})") from exc
        model.set_attn_implementation(attn_implementation)
        if dev.type == "cuda":
            model = model.half()
        return cls(model, device=dev, name=official or p.name, checkpoint_sha256=digest, official_name=official,
                   checkpoint_dir=p)

    def forward(self, batch: TokenizedCells, *, output_hidden_states: bool = False, grad: bool = False,
                output_attentions: bool = False, decode: bool = True) -> ModelOutput:
        """Run the masked-LM on one batch; with ``output_attentions`` the model must be eager and the weights
        ``[batch, heads, seq, seq]`` per layer come back in ``ModelOutput.attentions``. ``decode=False`` stops after
        the MLM head's transform (``features``): the vocabulary-sized decoder is most of a short model's forward at
        long inputs, and the read-outs need it at few positions (:meth:`token_logits_at`) or not at all
        (:meth:`output_distance`)."""
        if output_attentions and self.attn_implementation != "eager":
            raise RuntimeError("output_attentions needs attn_implementation='eager' (sdpa returns no weights)")
        with torch.set_grad_enabled(grad), torch.inference_mode(not grad):
            encoded = self.model.bert(self.as_tensor(batch.input_ids),
                                      attention_mask=self.as_tensor(batch.attention_mask),
                                      output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                      return_dict=True)
            features = self.model.cls.predictions.transform(encoded.last_hidden_state)
            logits = self.model.cls.predictions.decoder(features) if decode else None
        if output_attentions:
            assert len(encoded.attentions) == self.n_layers, "model returned attentions for fewer layers than it has"
        return ModelOutput(logits, logits, encoded.hidden_states, encoded.attentions if output_attentions else None,
                           None if decode else features)

    def token_logits_at(self, out: ModelOutput, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if out.token_logits is not None:
            return out.token_logits[rows, positions]
        with torch.inference_mode():
            return self.model.cls.predictions.decoder(out.features[rows, positions])

    def _decoder_gram(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(``W^T W`` ``[d, d]``, ``W^T b`` ``[d]``, ``b . b``) of the decoder ``logits = W x + b``, float64, cached
        until the decoder's weights change in place."""
        decoder = self.model.cls.predictions.decoder
        key = (decoder.weight.data_ptr(), decoder.weight._version, decoder.bias.data_ptr(), decoder.bias._version)
        if getattr(self, "_gram_key", None) != key:
            w, b = decoder.weight.detach().double(), decoder.bias.detach().double()
            self._gram, self._gram_key = (w.T @ w, w.T @ b, b @ b), key
        return self._gram

    def key_mask(self, args: tuple, kwargs: dict) -> torch.Tensor:
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        return torch.ones(ids.shape, dtype=torch.bool, device=ids.device) if mask is None else mask.bool()

    def masked(self, batch: TokenizedCells, chosen: np.ndarray) -> TokenizedCells:
        return dataclasses.replace(batch, input_ids=np.where(chosen, batch.params["mask_id"], batch.input_ids))

    def masked_prediction(self, out: ModelOutput, batch: TokenizedCells, chosen: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
        """Cross-entropy and top-1 accuracy of the logits at the ``chosen`` positions (decoded there only), averaged
        per cell."""
        rows, positions = (self.as_tensor(a) for a in np.nonzero(chosen))
        logits = self.token_logits_at(out, rows, positions).float()
        labels = self.as_tensor(batch.input_ids)[rows, positions]
        ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none").double()
        hit = (logits.argmax(-1) == labels).double()
        n = torch.zeros(len(chosen), dtype=torch.float64, device=self.device).index_add_(0, rows, torch.ones_like(ce))
        per_cell = [torch.zeros_like(n).index_add_(0, rows, v) / n for v in (ce, hit)]
        return per_cell[0].cpu().numpy(), per_cell[1].cpu().numpy()

    def prediction_change(self, out: ModelOutput, base: ModelOutput) -> torch.Tensor:
        """``[b, s]`` cosine distance of the logits at each position. Without decoded logits it is computed exactly
        from the decoder inputs: with ``l = W x + b``, ``l . l' = x^T (W^T W) x' + (W^T b) . (x + x') + b . b``, a
        ``d x d`` product instead of a ``d x vocab`` one."""
        if out.token_logits is not None and base.token_logits is not None:
            return 1 - torch.nn.functional.cosine_similarity(out.token_logits.float(), base.token_logits.float(),
                                                             dim=-1, eps=1e-8)
        if out.features is None or base.features is None:
            raise ValueError("prediction_change needs both passes' logits or both passes' decoder inputs")
        gram, wb, bb = self._decoder_gram()
        x, y = out.features.double(), base.features.double()
        xg, yg = x @ gram, y @ gram
        xu, yu = x @ wb, y @ wb
        dot = (xg * y).sum(-1) + xu + yu + bb
        nx, ny = (xg * x).sum(-1) + 2 * xu + bb, (yg * y).sum(-1) + 2 * yu + bb
        return 1 - dot / (nx.clamp(min=0).sqrt() * ny.clamp(min=0).sqrt()).clamp(min=1e-8)

    def output_distance(self, out: ModelOutput, base: ModelOutput, keep: torch.Tensor) -> np.ndarray:
        """Per cell, mean over real tokens of the logits' cosine distance (:meth:`prediction_change`)."""
        d = self.prediction_change(out, base)
        keep = keep.to(d.dtype)
        return ((d * keep).sum(1) / keep.sum(1)).cpu().numpy()

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def tokenizer(self, settings=None, dictionaries: str | Path | None = None) -> GeneformerTokenizer:
        """Rank-value tokeniser over Geneformer's dictionaries (``dictionaries`` or the checkpoint directory),
        checked against the checkpoint: the token dictionary must have exactly the embedding's rows. ``settings``
        (``analysis.config.TokenizerConfig``) holds value-binning options that rank-value encoding does not use."""
        dicts = load_dictionaries(dictionaries or self.checkpoint_dir)
        check_against_checkpoint(dicts, self.vocab_size, self.name)
        return GeneformerTokenizer(dicts, self.max_len)


Adapter = GeneformerAdapter
