"""The model-family seam (DESIGN.md section 4): every stage talks to a model through :class:`ModelAdapter` and to its
tokenisation through :class:`Tokenizer`; :func:`load_adapter` identifies the family of a checkpoint directory.

An adapter states its shapes (``n_layers``, ``n_heads``, ``d_head``, ``d_model``, ``max_len``), runs one batch of
:class:`TokenizedCells` (``forward``), and names its hook sites (:class:`SiteMap`): the query / key / value
projections (a module and the slice of its output that holds them, so packed ``Wqkv`` and separate projections look
the same), the head outputs (the input of the attention output projection, ``[batch, seq, heads * d_head]``), the MLP
output and each layer's output (the residual stream). Attention extraction, interventions, ablation read-outs and
the positive control are written once against these sites (``analysis.interp``); only ``analysis.models`` knows a
family. The behaviour read-out is the family's own pretraining objective on one fixed masking: masked-gene
cross-entropy (Geneformer) or masked-value MSE (scGPT).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..io import backed as on_disk
from . import FAMILIES


@dataclass(frozen=True)
class TokenizedCells:
    """Cells as model input.

    ``input_ids``: ``[cells, seq]`` int64 token ids, right-padded with the pad token; ``attention_mask``: ``[cells,
    seq]`` (1 = real token, special tokens included); ``gene_index``: ``[cells, seq]`` index into ``genes`` for each
    position (-1 for pad and special tokens); ``values``: ``[cells, seq]`` float32 expression input of value-aware
    models (scGPT's bins; None for rank-value tokens); ``genes``: one row per vocabulary gene of the data
    (``gene_id``, ``symbol``, ``token_id``); ``obs``: the cells' metadata in row order; ``params``: how they were
    made (recorded in the run manifest).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    gene_index: np.ndarray
    genes: pd.DataFrame
    obs: pd.DataFrame
    params: dict
    values: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        return self.input_ids.shape[0]

    @property
    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(axis=1)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Cell-index batches grouped by length (longest first), so padding is minimal."""
        order = np.argsort(-self.lengths, kind="stable")
        for start in range(0, order.size, batch_size):
            yield order[start:start + batch_size]

    def subset(self, idx: np.ndarray) -> "TokenizedCells":
        """Cells ``idx`` with the padded length trimmed to their longest input."""
        width = int(self.attention_mask[idx].sum(axis=1).max())
        values = None if self.values is None else self.values[idx, :width]
        return TokenizedCells(self.input_ids[idx, :width], self.attention_mask[idx, :width],
                              self.gene_index[idx, :width], self.genes, self.obs.iloc[idx], self.params, values)

    @classmethod
    def concat(cls, parts: list["TokenizedCells"]) -> "TokenizedCells":
        """The cells of ``parts`` (same ``genes`` and ``params``) in order, right-padded to the longest input."""
        width = max(t.input_ids.shape[1] for t in parts)

        def stack(name, fill):
            arrays = [getattr(t, name) for t in parts]
            return np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill)
                                   for a in arrays])
        first = parts[0]
        pad_id = int(first.params.get("pad_id", 0))
        values = None if first.values is None else stack("values", first.params.get("pad_value", 0.0))
        return cls(stack("input_ids", pad_id), stack("attention_mask", 0), stack("gene_index", -1), first.genes,
                   pd.concat([t.obs for t in parts]), first.params, values)

    def gene_presence(self) -> np.ndarray:
        """``[len(genes)]`` number of cells whose input holds each gene."""
        return np.bincount(self.gene_index[self.gene_index >= 0], minlength=len(self.genes))

    def gene_positions(self) -> np.ndarray:
        """``[cells, seq]`` bool: positions holding a gene (not pad, not a special token)."""
        return self.gene_index >= 0


class Tokenizer(ABC):
    """Turns validated cells into :class:`TokenizedCells` for one checkpoint.

    ``panel_dependent``: the input of every cell is the run's gene panel (scGPT's ``panel`` mode), so the panel is
    chosen first, from expression, and passed to :meth:`tokenize`; otherwise cells are tokenised on their own and the
    panel is chosen from the tokens. ``symbol_to_id`` maps gene symbols to Ensembl ids for loading the data."""

    panel_dependent: bool = False
    requires_ensembl: bool = True
    symbol_to_id: dict[str, str]
    source: str

    @abstractmethod
    def tokenize(self, cells, panel: pd.DataFrame | None = None) -> TokenizedCells:
        """Tokenise ``cells`` (``analysis.io.cells.CellData``); ``panel`` only when ``panel_dependent``."""

    def tokenize_blocks(self, cells, panel: pd.DataFrame | None = None) -> Iterator[tuple[np.ndarray, TokenizedCells]]:
        """``(rows, tokens of those rows)`` over every cell, a block of ``analysis.io.backed.BLOCK_ROWS`` rows at a
        time, in data order; what :meth:`tokenize` gives the same rows (a tokeniser that draws random numbers
        continues one stream across blocks)."""
        for rows in row_ranges(cells.n_cells):
            yield rows, self.tokenize(cells.subset(rows), panel=panel)

    @abstractmethod
    def vocabulary_genes(self, cells) -> pd.DataFrame:
        """The data's genes that are in the vocabulary (``gene_id``, ``symbol``, ``token_id``), in the order that
        :meth:`tokenize` indexes them by ``gene_index``."""


def row_ranges(n_cells: int) -> Iterator[np.ndarray]:
    """Row indices ``[0, n_cells)`` in blocks of ``analysis.io.backed.BLOCK_ROWS``."""
    step = on_disk.BLOCK_ROWS
    for start in range(0, n_cells, step):
        yield np.arange(start, min(start + step, n_cells))


def tokens_of(tokenizer: Tokenizer, cells, keep: np.ndarray, panel: pd.DataFrame | None = None
              ) -> tuple[TokenizedCells, np.ndarray]:
    """Tokens of cells ``keep`` (sorted indices) and every cell's gene presence ``[len(genes)]`` (cells whose input
    holds each gene), tokenising block by block so only the kept cells' tokens are ever held: the same as
    ``tokenizer.tokenize(cells).subset(keep)`` and its ``gene_presence()`` (obs index = ``keep``), in memory the size
    of ``keep``, for a screen of any size (counts on disk: :mod:`analysis.io.backed`)."""
    keep = np.asarray(keep, dtype=np.int64)
    presence, parts = None, []
    for rows, tokens in tokenizer.tokenize_blocks(cells, panel=panel):
        counted = tokens.gene_presence()
        presence = counted if presence is None else presence + counted
        local = np.searchsorted(rows, keep[(keep >= rows[0]) & (keep <= rows[-1])])
        if local.size:
            parts.append(tokens.subset(local))
    if not parts:
        raise ValueError("tokens_of: no cell kept")
    kept = TokenizedCells.concat(parts)
    kept = dataclasses.replace(kept, obs=kept.obs.set_axis(keep))
    return kept, presence


@dataclass(frozen=True)
class Site:
    """A module of the model and the slice ``[start, stop)`` of its output's last dimension that a site occupies
    (``None``: all of it), e.g. the key block of a packed ``Wqkv`` projection."""

    module: str
    start: int | None = None
    stop: int | None = None

    def take(self, output: torch.Tensor) -> torch.Tensor:
        return output if self.start is None else output[..., self.start:self.stop]


class SiteMap(ABC):
    """Module paths of the hook sites of one family (layer index 0-based); ``prefix`` is the path of the encoder's
    layer list."""

    prefix: ClassVar[str]
    entry: ClassVar[str] = ""   # the module called with the model's inputs (its forward pre-hook sees the key mask)

    def __init__(self, n_layers: int, d_model: int):
        self.n_layers, self.d_model = n_layers, d_model

    def layer(self, layer: int) -> str:
        """The encoder layer; its output (first element when a tuple) is the residual stream after the layer."""
        return f"{self.prefix}.{layer}"

    @abstractmethod
    def query(self, layer: int) -> Site:
        """Query projection ``[batch, seq, heads * d_head]``; its module's *input* is the hidden state entering the
        layer."""

    @abstractmethod
    def key(self, layer: int) -> Site:
        """Key projection ``[batch, seq, heads * d_head]``."""

    @abstractmethod
    def value(self, layer: int) -> Site:
        """Value projection ``[batch, seq, heads * d_head]``."""

    @abstractmethod
    def head_output(self, layer: int) -> str:
        """Attention output projection; its *input* is the concatenated head outputs ``[batch, seq, heads*d_head]``."""

    @abstractmethod
    def mlp_output(self, layer: int) -> str:
        """Second feed-forward linear: its output is the MLP's contribution before the residual add and LayerNorm."""


@dataclass
class ModelOutput:
    """One forward pass. ``prediction``: the pretraining head's output (Geneformer: token logits ``[b, s, vocab]``;
    scGPT: predicted values ``[b, s]``); ``token_logits``: ``[b, s, vocab]`` when the model predicts tokens (else
    None); ``hidden_states``: L + 1 tensors ``[b, s, d_model]`` (embeddings, then each layer) when requested;
    ``attentions``: L tensors ``[b, heads, s, s]`` when an eager model was asked for them; ``features``: ``[b, s,
    d_model]`` the input of the output decoder, set (and ``prediction`` / ``token_logits`` None) when a
    token-predicting model was run with ``decode=False``: :meth:`ModelAdapter.token_logits_at` decodes positions
    on demand."""

    prediction: torch.Tensor | None
    token_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    features: torch.Tensor | None = None


class ModelAdapter(ABC):
    """A loaded model of one family with its shapes, hook sites, tokeniser and behaviour read-out (module doc).

    Read-out labels (``readout_labels``) and the native cell embedding (``native_embedding``, one of
    ``analysis.io.files.EMBEDDING_KINDS``) are declared per family and recorded in the run manifest."""

    family: ClassVar[str]
    native_embedding: ClassVar[str]
    readout_labels: ClassVar[dict[str, str]]
    predicts_tokens: ClassVar[bool]   # the pretraining head scores gene tokens (target-recall behaviour applies)
    attention_convention: ClassVar[str]   # how this family's own tools read attention as gene -> gene edges

    def __init__(self, model: torch.nn.Module, *, device: torch.device, name: str, checkpoint_sha256: str | None,
                 official_name: str | None, n_layers: int, n_heads: int, d_model: int, max_len: int,
                 vocab_size: int, sites: SiteMap):
        self.model = model.eval().to(device)
        self.device = device
        self.name = name
        self.checkpoint_sha256 = checkpoint_sha256
        self.official_name = official_name
        self.n_layers, self.n_heads, self.d_model = n_layers, n_heads, d_model
        self.d_head = d_model // n_heads
        self.max_len, self.vocab_size = max_len, vocab_size
        self.sites = sites

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def module(self, path: str) -> torch.nn.Module:
        return self.model.get_submodule(path)

    def as_tensor(self, array: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(array, device=self.device, dtype=dtype)

    @abstractmethod
    def forward(self, batch: TokenizedCells, *, output_hidden_states: bool = False, grad: bool = False,
                decode: bool = True) -> ModelOutput:
        """Run one batch (no autograd unless ``grad``). ``decode=False`` lets a token-predicting model stop before
        its vocabulary-sized decoder (``ModelOutput.features``); a family whose decoder is cheap ignores it."""

    def token_logits_at(self, out: ModelOutput, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``[n, vocab]`` token logits at (``rows``, ``positions``) of ``out`` (token-predicting families), decoded
        from ``out.features`` when the forward did not decode."""
        if out.token_logits is None:
            raise ValueError(f"{self.family} does not predict tokens")
        return out.token_logits[rows, positions]

    @abstractmethod
    def key_mask(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """``[b, s]`` bool, True at real keys, from the arguments of the model's own ``forward`` call."""

    @abstractmethod
    def masked(self, batch: TokenizedCells, chosen: np.ndarray) -> TokenizedCells:
        """The batch with positions ``chosen`` (``[b, s]`` bool, gene positions) masked as in pretraining."""

    @abstractmethod
    def masked_prediction(self, out: ModelOutput, batch: TokenizedCells, chosen: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
        """Per cell ``[b]``: the pretraining loss at ``chosen`` positions of the masked input's output ``out``, and
        an accuracy (``readout_labels`` say which)."""

    @abstractmethod
    def prediction_change(self, out: ModelOutput, base: ModelOutput) -> torch.Tensor:
        """``[b, s]``: how far ``out``'s prediction at each position moved from the unablated ``base``'s (the
        family's per-position read-out: Geneformer, the logits' cosine distance; scGPT, the predicted value's
        absolute change)."""

    @abstractmethod
    def output_distance(self, out: ModelOutput, base: ModelOutput, keep: torch.Tensor) -> np.ndarray:
        """Per cell ``[b]``: cosine distance of ``out``'s prediction to the unablated ``base`` (``keep``: ``[b, s]``
        real tokens)."""

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write the model's weights into ``directory`` in the family's release layout (the directory holds the
        checkpoint's other files already, e.g. a copy of the checkpoint it was loaded from)."""

    @abstractmethod
    def tokenizer(self, settings: Any, dictionaries: str | Path | None = None) -> Tokenizer:
        """The tokeniser for this checkpoint, checked against it before anything runs (``settings``:
        ``analysis.config.TokenizerConfig``; ``dictionaries``: a directory of gene dictionaries)."""

    def head_parameters(self, layer: int, head: int) -> dict[torch.nn.Parameter, torch.Tensor]:
        """Every parameter that holds part of one head, with a 0/1 mask of that part: the head's rows of the query,
        key and value projections (weights and biases; one packed parameter gets one mask covering all three) and
        its columns of the output projection."""
        lo, hi = head * self.d_head, (head + 1) * self.d_head
        masks: dict[torch.nn.Parameter, torch.Tensor] = {}
        for site in (self.sites.query(layer), self.sites.key(layer), self.sites.value(layer)):
            linear = self.module(site.module)
            offset = site.start or 0
            for param in (linear.weight, linear.bias):
                mask = masks.setdefault(param, torch.zeros_like(param))
                mask[offset + lo:offset + hi] = 1
        dense = self.module(self.sites.head_output(layer))
        masks[dense.weight] = torch.zeros_like(dense.weight)
        masks[dense.weight][:, lo:hi] = 1
        return masks

    def describe(self) -> dict:
        """The manifest's ``model`` section."""
        return {"family": self.family, "name": self.name, "n_layers": self.n_layers, "n_heads": self.n_heads,
                "d_head": self.d_head, "d_model": self.d_model, "max_len": self.max_len, "device": str(self.device),
                "native_embedding": self.native_embedding, "readout_labels": dict(self.readout_labels),
                "predicts_tokens": self.predicts_tokens, "attention_convention": self.attention_convention}


def masked_positions(tokens: TokenizedCells, *, probability: float = 0.15, seed: int = 0) -> np.ndarray:
    """``[cells, seq]`` bool: a seeded held-out masking of gene positions, at least one per cell (the ablation's
    fixed masking; every intervention is read out on the same positions)."""
    rng = np.random.default_rng(seed)
    genes = tokens.gene_positions()
    chosen = (rng.random(genes.shape) < probability) & genes
    for i in np.nonzero(~chosen.any(axis=1))[0]:
        chosen[i, rng.choice(np.nonzero(genes[i])[0])] = True
    return chosen


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; an unavailable device is refused."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"model.device {device!r} is not a device (use auto, cpu or cuda)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("model.device is cuda but no CUDA device is available; use --device cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"model.device {device!r} is not supported (use auto, cpu or cuda)")
    return dev


def detect_family(directory: str | Path) -> str:
    """The family of a checkpoint directory: an HF ``config.json`` with ``model_type: bert`` is Geneformer;
    ``args.json`` + ``vocab.json`` is scGPT. Anything else is refused, naming what was found."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"model directory {d} does not exist")
    has_config = (d / "config.json").is_file()
    has_scgpt = (d / "args.json").is_file() and (d / "vocab.json").is_file()
    if has_config and has_scgpt:
        raise InputError(f"{d} holds both config.json and args.json + vocab.json; pass --model-family geneformer or "
                         "scgpt")
    if has_scgpt:
        return "scgpt"
    if has_config:
        try:
            model_type = json.loads((d / "config.json").read_text()).get("model_type")
        except (OSError, ValueError, AttributeError) as exc:
            raise InputError(f"{d / 'config.json'} is not a valid JSON object ({exc})") from exc
        if model_type == "bert":
            return "geneformer"
        raise InputError(f"{d / 'config.json'} has model_type {model_type!r}: not a Geneformer checkpoint (BERT); "
                         "supported are Geneformer (config.json with model_type 'bert') and scGPT (args.json + "
                         "vocab.json + best_model.pt)")
    found = sorted(p.name for p in d.iterdir())[:10]
    raise InputError(f"{d} is not a model checkpoint directory: found {found or 'nothing'}; expected config.json "
                     "(Geneformer) or args.json + vocab.json + best_model.pt (scGPT)")


def load_adapter(directory: str | Path, *, family: str | None = None, device: str = "auto",
                 random_init: bool = False, seed: int = 0) -> ModelAdapter:
    """Load a local checkpoint directory through its family's adapter (``family`` None or ``"auto"``: detected).
    Nothing is ever downloaded."""
    if family in (None, "auto"):
        family = detect_family(directory)
    if family not in FAMILIES:
        raise InputError(f"model family {family!r} is not supported; choose from {sorted(FAMILIES)}")
    module = importlib.import_module(FAMILIES[family])
    return module.Adapter.from_pretrained(directory, device=device, random_init=random_init, seed=seed)
