"""Intervention specs (torch-free, so the app can build and key them): head and MLP interventions, and edits of SAE
features; frozen, hashable, serialisable; the same object keys caches, fills manifests and populates UI options
(DESIGN.md section 9.4). Hooks: analysis.interp.hooks."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

READOUTS = ("mlm_loss", "mlm_accuracy", "target_recall_loss", "reference_auroc", "perturbation_auroc",
            "output_cosine_distance")
KINDS = ("zero_head", "mean_head", "uniform_head", "zero_mlp")
HEAD_KINDS = ("zero_head", "mean_head", "uniform_head")


@dataclass(frozen=True)
class InterventionSpec:
    """One intervention at one layer (0-based); ``heads`` is empty for ``zero_mlp``. Hashable and serialisable;
    ``key`` is stable and keys caches, manifests and UI options."""

    kind: str
    layer: int
    heads: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"intervention kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind in HEAD_KINDS) != bool(self.heads):
            raise ValueError(f"{self.kind} needs {'at least one head' if self.kind in HEAD_KINDS else 'no heads'}")
        object.__setattr__(self, "heads", tuple(sorted({int(h) for h in self.heads})))

    @property
    def key(self) -> str:
        heads = f"[{','.join(map(str, self.heads))}]" if self.heads else ""
        return f"{self.kind}@L{self.layer}{heads}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "layer": self.layer, "heads": list(self.heads)}


def intervention_key(specs: Sequence[InterventionSpec]) -> str:
    """Stable key of a composition (order-independent); ``baseline`` for none."""
    return "+".join(sorted(s.key for s in specs)) or "baseline"


@dataclass(frozen=True)
class FeatureEdit:
    """Features ``features`` of the SAE at ``layer`` multiplied by ``scale`` (0 zeroes them). Hashable; ``key`` is
    stable and names the edit in results and caches."""

    layer: int
    features: tuple[int, ...]
    scale: float

    def __post_init__(self):
        if not self.features:
            raise ValueError("a feature edit needs at least one feature")
        if not math.isfinite(self.scale):
            raise ValueError(f"a feature edit's scale must be a finite number, got {self.scale}")
        object.__setattr__(self, "features", tuple(sorted({int(f) for f in self.features})))
        object.__setattr__(self, "scale", float(self.scale))

    @property
    def key(self) -> str:
        return f"sae@L{self.layer}[{','.join(map(str, self.features))}]x{self.scale:g}"
