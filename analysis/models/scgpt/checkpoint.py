"""A scGPT checkpoint directory in the release layout: ``args.json`` (training arguments), ``vocab.json`` (token ->
index) and ``best_model.pt`` (a plain ``state_dict``), read into a :class:`~.model.ScGPTModel` strictly.

Accepted key layouts, each mapped to the native (official release) names (``shared/design/scgpt.md`` sections 1.6,
1.7): the flash-attn 1.x names of the release (``self_attn.Wqkv.*``), scGPT HEAD's flash wrapper
(``self_attn._impl.Wqkv.*``, ``self_attn._impl.out_proj.*``), torch's ``MultiheadAttention``
(``self_attn.in_proj_weight`` / ``in_proj_bias``), each optionally under a DDP ``module.`` prefix. Loading is strict:
a missing key or a shape mismatch is refused with the key named (scGPT's own non-strict loader silently keeps random
q/k/v when names do not match); fine-tuned-only batch-norm keys (``bn.*``, ``dsbn.*``) are refused because this
model does not apply them; only ``cls_decoder.*`` (a fine-tuning head the encoder never uses) is dropped, and said.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Mapping

import torch

from ...errors import InputError
from .model import ScGPTConfig, ScGPTModel

log = logging.getLogger(__name__)
ARGS, VOCAB, WEIGHTS = "args.json", "vocab.json", "best_model.pt"
PAD, CLS = "<pad>", "<cls>"
UNUSED_PREFIXES = ("cls_decoder.",)
REFUSED_PREFIXES = ("bn.", "dsbn.")
RENAMES = ((re.compile(r"\.self_attn\._impl\."), ".self_attn."),
           (re.compile(r"\.self_attn\.in_proj_(weight|bias)$"), r".self_attn.Wqkv.\1"))


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise InputError(f"{path.parent} has no {path.name}: a scGPT model directory holds {ARGS}, {VOCAB} and "
                         f"{WEIGHTS}")
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); is it scGPT's {what}?") from exc
    if not isinstance(obj, dict):
        raise InputError(f"{path} holds a JSON {type(obj).__name__}, expected scGPT's {what} (an object)")
    return obj


def read_vocab(path: Path) -> dict[str, int]:
    """``vocab.json``: ``{token: index}`` with consecutive indices 0..n-1 and ``<pad>``, ``<cls>`` present."""
    vocab = read_json(path, "vocabulary (token -> index)")
    try:
        vocab = {str(k): int(v) for k, v in vocab.items()}
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: vocabulary indices must be integers ({exc})") from exc
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise InputError(f"{path}: indices are not consecutive 0..{len(vocab) - 1}; scGPT vocabularies are")
    missing = [t for t in (PAD, CLS) if t not in vocab]
    if missing:
        raise InputError(f"{path} lacks the special token(s) {missing}; is it a scGPT vocab.json?")
    return vocab


def config_from_args(args: Mapping, vocab: Mapping[str, int], n_flag_rows: int) -> ScGPTConfig:
    """Architecture from ``args.json``; refuses variants this model does not implement."""
    where = "args.json"
    missing = [k for k in ("embsize", "nheads", "nlayers", "d_hid") if k not in args]
    if missing:
        raise InputError(f"{where} lacks {missing}: not scGPT training arguments")
    style = args.get("input_emb_style", "continuous")
    if style != "continuous":
        raise InputError(f"{where}: input_emb_style {style!r} is not supported (the whole-human model's "
                         "continuous value encoder is); use a checkpoint trained with input_emb_style 'continuous'")
    for flag in ("domain_spec_batchnorm", "explicit_zero_prob", "pre_norm"):
        if args.get(flag) not in (None, False, "", "none"):
            raise InputError(f"{where}: {flag}={args[flag]!r} is not supported by this adapter (whole-human has "
                             "post-LN layers, no batch-norm and no zero-probability head)")
    pad_token = args.get("pad_token", PAD)
    if pad_token not in vocab:
        raise InputError(f"{where}: pad_token {pad_token!r} is not in vocab.json")
    try:
        return ScGPTConfig(vocab_size=len(vocab), d_model=int(args["embsize"]), n_heads=int(args["nheads"]),
                           n_layers=int(args["nlayers"]), d_hid=int(args["d_hid"]),
                           dropout=float(args.get("dropout", 0.0)), pad_id=vocab[pad_token], n_flag_rows=n_flag_rows)
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from exc


def native_key(key: str) -> str:
    """Map a key of any accepted layout to the native name (module doc)."""
    if key.startswith("module."):
        key = key[len("module."):]
    for pattern, repl in RENAMES:
        key = pattern.sub(repl, key)
    return key


def normalise_state_dict(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Native-named state dict; refuses batch-norm keys and key collisions, drops (and logs) unused heads."""
    out: dict[str, torch.Tensor] = {}
    dropped = []
    for key, value in state.items():
        name = native_key(str(key))
        if name.startswith(REFUSED_PREFIXES):
            raise InputError(f"{source} holds {key!r}: a fine-tuned checkpoint with batch-norm after the embeddings, "
                             "which this adapter does not apply; use the pretrained (whole-human) checkpoint")
        if name.startswith(UNUSED_PREFIXES):
            dropped.append(key)
            continue
        if name in out:
            raise InputError(f"{source} holds {key!r} and another key that both map to {name!r}")
        out[name] = value
    if dropped:
        log.info("%s: ignoring %d key(s) of heads the encoder never uses (%s ...)", source, len(dropped), dropped[0])
    return out


def check_state_dict(model: ScGPTModel, state: Mapping[str, torch.Tensor], source: str) -> None:
    """What ``model.load_state_dict(state, strict=True)`` would refuse, as an :class:`InputError` naming the key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise InputError(f"{source} lacks {len(missing)} key(s) of the scGPT model, first {missing[0]!r}; is the "
                         "checkpoint complete and of this architecture (args.json)?")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise InputError(f"{source} holds {len(unexpected)} key(s) the scGPT model does not have, first "
                         f"{unexpected[0]!r}; it is not a whole-human-style scGPT checkpoint")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise InputError(f"{source}: {k!r} has shape {tuple(v.shape)} but args.json / vocab.json imply "
                             f"{tuple(expected[k].shape)} (a vocabulary or args.json of another checkpoint?)")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """``best_model.pt`` as a plain mapping of tensors (loaded with ``weights_only``: no code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise InputError(f"{path} is not a readable PyTorch state_dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} is not a plain state_dict of tensors (scGPT's best_model.pt is)")
    return dict(state)


def build_model(directory: Path, *, random_init: bool = False, seed: int = 0) -> tuple[ScGPTModel, dict, dict]:
    """(model, args, vocab) from a release directory. With ``random_init`` the weights file is not read and the
    model is initialised from ``seed`` (``flag_encoder`` with 2 rows)."""
    args = read_json(directory / ARGS, "training arguments")
    vocab = read_vocab(directory / VOCAB)
    if random_init:
        torch.manual_seed(seed)
        return ScGPTModel(config_from_args(args, vocab, n_flag_rows=2)), args, vocab
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise InputError(f"{directory} has no {WEIGHTS}; pass --random-weights to run on random weights with this "
                         "args.json")
    state = normalise_state_dict(read_weights(weights), str(weights))
    flag = state.get("flag_encoder.weight")
    with torch.device("meta"):
        model = ScGPTModel(config_from_args(args, vocab, n_flag_rows=0 if flag is None else int(flag.shape[0])))
    check_state_dict(model, state, str(weights))   # checked on the meta device: no memory for a refused file
    model.load_state_dict(state, strict=True, assign=True)
    return model.float(), args, vocab


def save_weights(model: ScGPTModel, directory: Path) -> None:
    """``best_model.pt``: a plain fp32 state_dict under the release key names."""
    torch.save({k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}, directory / WEIGHTS)


def save_release(model: ScGPTModel, args: Mapping, vocab: Mapping[str, int], directory: Path) -> None:
    """Write ``args.json``, ``vocab.json`` and ``best_model.pt`` (the release layout)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ARGS).write_text(json.dumps(dict(args), indent=2))
    (directory / VOCAB).write_text(json.dumps(dict(vocab)))
    save_weights(model, directory)
