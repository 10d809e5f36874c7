"""The typed run manifest: what a finished run is (config and its hash, model, data, references, tokenisation,
seeds, input and file sha256s, package versions, stage timings), written last into ``manifest.json`` by
:class:`analysis.io.artifacts.RunWriter` and read back by the app and by :mod:`analysis.rerun` as one object, so no
reader indexes a dict by string keys or re-derives a quantity (the read-out layer is resolved once, here)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..config import RunConfig
from ..errors import SchemaError


FIELD_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "str | None": (str, type(None)),
               "int | None": (int, type(None)), "dict[str, str]": (dict,), "dict[str, Any]": (dict,),
               "dict[str, int]": (dict,), "dict[str, dict]": (dict,), "dict[str, float]": (dict,),
               "tuple[str, ...]": (tuple,), "tuple[dict, ...]": (tuple,)}


def check_field_types(obj) -> None:
    """Refuse a manifest dataclass whose fields of plain types (:data:`FIELD_TYPES`) hold another type (a number
    where a date string belongs took every page down: the run picker sorts on it). :class:`SchemaError` names the
    field, its type and the type expected."""
    for f in dataclasses.fields(obj):
        allowed = FIELD_TYPES.get(f.type)
        value = getattr(obj, f.name)
        if allowed is None:
            continue
        if (not isinstance(value, allowed)) or (bool not in allowed and isinstance(value, bool)):
            raise SchemaError(f"manifest field {type(obj).__name__}.{f.name} is a {type(value).__name__} "
                              f"({value!r}), expected {f.type}")


@dataclass(frozen=True)
class ModelInfo:
    """The model a run used: ``family`` (``geneformer``, ``scgpt``), shapes, device, where it came from, how its
    behaviour read-outs are labelled (``readout_labels``: read-out key -> what it measures for this family) and which
    cell embedding is native to it."""

    family: str
    name: str
    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    max_len: int
    device: str
    random_init: bool
    native_embedding: str
    predicts_tokens: bool
    readout_labels: dict[str, str] = field(default_factory=dict)
    attention_convention: str = ""

    @property
    def label(self) -> str:
        """``"scgpt: embedded tiny scgpt"`` style: family first, then the checkpoint's name."""
        return f"{self.family}: {self.name}"


@dataclass(frozen=True)
class DataInfo:
    n_cells: int
    n_genes: int
    n_vocab_genes: int
    panel_size: int
    perturbations: tuple[str, ...]
    cell_state_col: str | None
    attention_cells: int = 0                  # cells attention and ablation ran on (``extraction.cells``)
    attention_cell_selection: str = "all"
    universe: str = "panel"                   # ``perturbation.universe`` and its size in genes
    universe_genes: int = 0
    perturbations_left_out: int = 0          # perturbed genes not in the panel (table perturbations_left_out)
    counts_source: str = "X"                  # the matrix the counts came from and why

    @property
    def cells_line(self) -> str:
        """``"1200 cells; attention and ablation on 480 control cells"``: every page header says it."""
        return (f"{self.n_cells} cells; attention and ablation on {self.attention_cells} "
                f"{self.attention_cell_selection} cells")


@dataclass(frozen=True)
class RunManifest:
    """A complete run (module doc). ``readout_layer``: the pre-specified attention read-out layer, 0-based;
    ``inputs``: sha256 of the data and references, the checkpoint directory, its sha256 and the dictionaries."""

    run_id: str
    config: RunConfig
    config_hash: str
    run_key: str
    model: ModelInfo
    data: DataInfo
    readout_layer: int
    inputs: dict[str, Any]
    references: tuple[dict, ...]
    tokenizer: dict[str, Any]
    seeds: dict[str, int]
    provenance: dict[str, Any]
    files: dict[str, dict]
    stage_timings: tuple[dict, ...]
    versions: dict[str, str]
    finished: str
    wall_seconds: float
    protocol: dict[str, Any] = field(default_factory=lambda: {"name": "none", "deviations": []})
    plan: dict[str, Any] = field(default_factory=dict)   # the plan made before the run (analysis.stages.plan)

    @property
    def family(self) -> str:
        return self.model.family

    @property
    def reference_names(self) -> list[str]:
        return [r["name"] for r in self.references]

    @property
    def title(self) -> str:
        """One line naming the run for pickers, page headers and exports (random weights said: an untrained control
        and its trained twin share everything else)."""
        weights = ", random weights" if self.config.model.random_init else ""
        return f"{self.run_id} ({self.model.family}: {self.model.name}{weights}, {self.data.n_cells} cells)"

    @property
    def short_name(self) -> str:
        """The run in a comparison's legends and tables: its family and hash (``geneformer 3ecbb434ef``; ``untrained``
        added for random weights)."""
        untrained = " untrained" if self.config.model.random_init else ""
        return f"{self.model.family} {self.run_id.split('-')[-1]}{untrained}"

    def readout_label(self, readout: str) -> str:
        """What a read-out key measures for this run's model family (the key itself when not family-specific)."""
        return self.model.readout_labels.get(readout, readout.replace("_", " "))

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["config"] = self.config.to_dict()
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "RunManifest":
        """Parse ``manifest.json``; a missing or malformed field raises :class:`SchemaError` naming it."""
        try:
            fields = {f.name for f in dataclasses.fields(cls)}
            required = {f.name for f in dataclasses.fields(cls)
                        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
            missing = sorted(required - set(raw))
            if missing:
                raise SchemaError(f"manifest lacks {missing} (written by an older version of the explorer?)")
            data = dict(raw["data"])
            data["perturbations"] = tuple(data["perturbations"])
            manifest = cls(**{**{k: raw[k] for k in fields if k in raw},
                              "config": RunConfig.from_dict(raw["config"]),
                              "model": ModelInfo(**raw["model"]), "data": DataInfo(**data),
                              "references": tuple(raw["references"]), "stage_timings": tuple(raw["stage_timings"]),
                              "readout_layer": int(raw["readout_layer"]), "wall_seconds": float(raw["wall_seconds"])})
            for part in (manifest, manifest.model, manifest.data):
                check_field_types(part)
            return manifest
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, SchemaError):
                raise
            raise SchemaError(f"manifest is malformed ({type(exc).__name__}: {exc})") from exc
