"""scGPT adapter: the native model (:mod:`.model`) loaded strictly from a release directory (:mod:`.checkpoint`),
its hook sites, binned-value tokeniser and masked-value read-out.

Sites: q, k and v are the three ``d_model`` blocks of each layer's packed ``self_attn.Wqkv`` output (head-major
within each block); head outputs enter ``self_attn.out_proj``; the MLP output is ``linear2`` (post-LN, so ``norm2``
still runs when it is zeroed). The native cell embedding is the final output at ``<cls>``. The behaviour read-out is
scGPT's pretraining objective: the masked-value MSE ``sum((pred - target)^2 mask) / sum(mask)`` of the expression
decoder at masked positions (input value set to ``mask_value`` -1), with an exact-bin accuracy (the rounded
prediction equals the true bin) beside it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ...io.artifacts import sha256_path
from ..base import ModelAdapter, ModelOutput, Site, SiteMap, TokenizedCells, resolve_device
from .checkpoint import WEIGHTS, build_model, save_weights
from .model import ScGPTModel
from .tokenizer import ScGPTTokenizer

MASK_VALUE = -1.0


class ScGPTSites(SiteMap):
    """scGPT encoder sites: q / k / v are slices of each layer's packed ``Wqkv`` projection."""

    prefix = "transformer_encoder.layers"

    def query(self, layer: int) -> Site:
        return Site(f"{self.prefix}.{layer}.self_attn.Wqkv", 0, self.d_model)

    def key(self, layer: int) -> Site:
        return Site(f"{self.prefix}.{layer}.self_attn.Wqkv", self.d_model, 2 * self.d_model)

    def value(self, layer: int) -> Site:
        return Site(f"{self.prefix}.{layer}.self_attn.Wqkv", 2 * self.d_model, 3 * self.d_model)

    def head_output(self, layer: int) -> str:
        return f"{self.prefix}.{layer}.self_attn.out_proj"

    def mlp_output(self, layer: int) -> str:
        return f"{self.prefix}.{layer}.linear2"


class ScGPTAdapter(ModelAdapter):
    """A loaded scGPT (module doc). ``args`` / ``vocab``: the checkpoint's ``args.json`` and ``vocab.json``."""

    family = "scgpt"
    native_embedding = "cls"
    readout_labels = {"mlm_loss": "masked-value MSE (expression decoder, masked positions)",
                      "mlm_accuracy": "masked-value exact-bin accuracy (rounded prediction = true bin)",
                      "output_cosine_distance": "cosine distance of the predicted value profile over genes"}
    predicts_tokens = False
    attention_convention = ("scGPT: q and k come from each layer's packed Wqkv; in panel mode every cell holds every "
                            "panel gene (zeros included). scGPT's attention-GRN tutorial reads A[target, TF] (the "
                            "target_to_tf direction) and ranks raw q.k, which orders like this softmax attention.")

    def __init__(self, model: ScGPTModel, *, device: torch.device, name: str, checkpoint_sha256: str | None,
                 args: dict, vocab: dict[str, int], official_name: str | None = None):
        cfg = model.config
        self.args, self.vocab = dict(args), dict(vocab)
        self.pad_value = float(args.get("pad_value", -2))
        self.mask_value = float(args.get("mask_value", MASK_VALUE))
        super().__init__(model, device=device, name=name, checkpoint_sha256=checkpoint_sha256,
                         official_name=official_name, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=cfg.d_model,
                         max_len=int(args.get("max_seq_len", 1200)), vocab_size=cfg.vocab_size,
                         sites=ScGPTSites(cfg.n_layers, cfg.d_model))

    @property
    def n_bins(self) -> int:
        return int(self.args.get("n_bins", 51))

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "auto", random_init: bool = False, seed: int = 0,
                        attn_implementation: str = "sdpa") -> "ScGPTAdapter":
        """Load ``args.json`` + ``vocab.json`` + ``best_model.pt`` strictly (``random_init``: the first two only).
        fp32 on CPU, fp16 on CUDA."""
        p = Path(path)
        dev = resolve_device(device)
        model, args, vocab = build_model(p, random_init=random_init, seed=seed)
        digest = None if random_init else sha256_path(p / WEIGHTS)
        model.set_attn_implementation(attn_implementation)
        if dev.type == "cuda":
            model = model.half()
        return cls(model, device=dev, name=p.name, checkpoint_sha256=digest, args=args, vocab=vocab)

    def forward(self, batch: TokenizedCells, *, output_hidden_states: bool = False, grad: bool = False,
                decode: bool = True) -> ModelOutput:
        """Run one batch. The expression decoder is a per-position MLP to one value, cheap at any length, so it
        always runs (``decode`` is accepted for the seam and ignored)."""
        if batch.values is None:
            raise ValueError("scGPT needs binned values: tokenise the cells with this adapter's tokenizer")
        with torch.set_grad_enabled(grad), torch.inference_mode(not grad):
            out = self.model(self.as_tensor(batch.input_ids), self.as_tensor(batch.values, torch.float32),
                             self.as_tensor(batch.attention_mask).bool(), output_hidden_states=output_hidden_states)
        return ModelOutput(out.mlm_output, None, out.hidden_states)

    def key_mask(self, args: tuple, kwargs: dict) -> torch.Tensor:
        return (args[2] if len(args) > 2 else kwargs["keep"]).bool()

    def masked(self, batch: TokenizedCells, chosen: np.ndarray) -> TokenizedCells:
        return dataclasses.replace(batch, values=np.where(chosen, self.mask_value, batch.values).astype(np.float32))

    def masked_prediction(self, out: ModelOutput, batch: TokenizedCells, chosen: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
        pred = out.prediction.float()
        target = self.as_tensor(batch.values, torch.float32)
        hit = self.as_tensor(chosen).float()
        n = hit.sum(1).clamp(min=1)
        mse = (((pred - target) ** 2) * hit).sum(1) / n
        exact = ((pred.round() == target).float() * hit).sum(1) / n
        return mse.cpu().numpy(), exact.cpu().numpy()

    def prediction_change(self, out: ModelOutput, base: ModelOutput) -> torch.Tensor:
        """``[b, s]`` absolute change of the predicted value at each position."""
        return (out.prediction.float() - base.prediction.float()).abs()

    def output_distance(self, out: ModelOutput, base: ModelOutput, keep: torch.Tensor) -> np.ndarray:
        genes = keep.clone()
        genes[:, 0] = False                                   # <cls> carries no value prediction
        a = torch.where(genes, out.prediction.float(), 0.0)
        b = torch.where(genes, base.prediction.float(), 0.0)
        return (1 - torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-8)).cpu().numpy()

    def save(self, directory: Path) -> None:
        save_weights(self.model, directory)

    def tokenizer(self, settings, dictionaries: str | Path | None = None) -> ScGPTTokenizer:
        """Binned-value tokeniser over ``vocab.json`` (``settings``: ``analysis.config.TokenizerConfig``). With
        ``dictionaries``, its ``gene_name_id_dict*.pkl`` maps Ensembl ids to symbols."""
        from ..geneformer.tokenizer import load_name_table

        names = load_name_table(Path(dictionaries)) if dictionaries else {}
        cls_value = self.pad_value if settings.cls_value is None else settings.cls_value
        return ScGPTTokenizer(self.vocab, n_bins=self.n_bins, max_len=self.max_len, pad_value=self.pad_value,
                              cls_value=cls_value, mode=settings.mode, seed=settings.seed, symbol_to_id=names,
                              source=f"{self.name}/vocab.json")


Adapter = ScGPTAdapter
