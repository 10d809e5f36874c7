"""Reference networks: TRRUST v2 raw TSV and DoRothEA (confidence-filtered) -> :class:`ReferenceNetwork`.

Edges are TF -> target symbol pairs (upper-cased), deduplicated; mode is Activation / Repression / Unknown
(TRRUST) or the sign of DoRothEA's ``mor``. Evaluation restricts them to an evaluable universe (paper
Supplementary Notes 1 and 13): TFs and targets both in the gene panel.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .cells import InputError

TRRUST_MODES = {"Activation", "Repression", "Unknown"}
DOROTHEA_LEVELS = "ABCDE"
KINDS = ("trrust", "dorothea")


@dataclass(frozen=True)
class ReferenceNetwork:
    """``edges``: tidy table (schema ``reference_edges``): reference, tf, target, mode, confidence."""

    name: str
    edges: pd.DataFrame
    params: dict

    @property
    def tfs(self) -> set[str]:
        return set(self.edges["tf"])

    def pairs(self) -> set[tuple[str, str]]:
        return set(zip(self.edges["tf"], self.edges["target"]))


def load_trrust(path: str | Path, name: str = "TRRUST") -> ReferenceNetwork:
    """TRRUST v2 raw layout: tab-separated, no header, columns TF, target, mode, PMIDs (a header row is allowed)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"reference file {p} does not exist")
    try:
        raw = pd.read_csv(p, sep="\t", header=None, dtype=str, comment=None, keep_default_na=False)
    except Exception as exc:
        raise InputError(f"{p} is not a readable tab-separated TRRUST table ({exc})") from exc
    if raw.shape[1] < 3:
        raise InputError(f"{p} has {raw.shape[1]} tab-separated column(s); TRRUST needs TF, target, mode[, PMIDs] "
                         "separated by tabs")
    if raw.iloc[0, 2].strip().lower() in ("mode", "regulation", "type"):
        raw = raw.iloc[1:]
    raw = raw.iloc[:, :3].apply(lambda s: s.str.strip())
    raw.columns = ["tf", "target", "mode"]
    bad = ~raw["mode"].isin(TRRUST_MODES)
    if bad.any():
        line = int(raw.index[bad][0]) + 1
        raise InputError(f"{p} line {line}: mode {raw['mode'][bad].iloc[0]!r} is not one of "
                         f"{sorted(TRRUST_MODES)}; is this a TRRUST raw TSV (TF, target, mode, PMIDs)?")
    empty = (raw["tf"] == "") | (raw["target"] == "")
    if empty.any():
        raise InputError(f"{p} line {int(raw.index[empty][0]) + 1}: empty TF or target")
    edges = raw.assign(tf=raw["tf"].str.upper(), target=raw["target"].str.upper())
    edges = edges.drop_duplicates(["tf", "target"]).reset_index(drop=True)
    edges.insert(0, "reference", name)
    edges["confidence"] = "NA"
    return ReferenceNetwork(name, edges, {"kind": "trrust", "path": str(p), "n_edges": len(edges)})


def load_dorothea(path: str | Path, min_confidence: str = "B", name: str | None = None) -> ReferenceNetwork:
    """DoRothEA table with columns tf, confidence (A-E), target, mor; keeps levels A..``min_confidence``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"reference file {p} does not exist")
    if min_confidence not in DOROTHEA_LEVELS:
        raise InputError(f"DoRothEA confidence {min_confidence!r} must be one of {DOROTHEA_LEVELS}")
    try:
        raw = pd.read_csv(p, sep=None, engine="python", dtype=str)
    except Exception as exc:
        raise InputError(f"{p} is not a readable DoRothEA table ({exc})") from exc
    missing = {"tf", "confidence", "target", "mor"} - set(raw.columns)
    if missing:
        raise InputError(f"{p} lacks DoRothEA column(s) {sorted(missing)}; has {list(raw.columns)}")
    levels = set(DOROTHEA_LEVELS[: DOROTHEA_LEVELS.index(min_confidence) + 1])
    keep = raw[raw["confidence"].isin(levels)]
    mor = pd.to_numeric(keep["mor"], errors="coerce")
    edges = pd.DataFrame({
        "reference": name or f"DoRothEA_{min_confidence}",
        "tf": keep["tf"].str.upper().to_numpy(), "target": keep["target"].str.upper().to_numpy(),
        "mode": mor.map(lambda m: "Activation" if m > 0 else "Repression" if m < 0 else "Unknown").to_numpy(),
        "confidence": keep["confidence"].to_numpy(),
    }).drop_duplicates(["tf", "target"]).reset_index(drop=True)
    return ReferenceNetwork(edges["reference"].iloc[0] if len(edges) else (name or "DoRothEA"), edges,
                            {"kind": "dorothea", "path": str(p), "min_confidence": min_confidence,
                             "n_edges": len(edges)})


def load_reference(spec: str, dorothea_min_confidence: str = "B") -> ReferenceNetwork:
    """Load ``kind:path`` (kind in trrust, dorothea; a bare path is guessed from its name, default TRRUST)."""
    kind, _, path = spec.partition(":") if spec.split(":", 1)[0] in KINDS else ("", "", spec)
    kind = kind or ("dorothea" if "dorothea" in Path(path).name.lower() else "trrust")
    if kind == "dorothea":
        return load_dorothea(path, dorothea_min_confidence)
    stem = Path(path).name.split(".")[0]
    return load_trrust(path, name="TRRUST" if "trrust" in stem.lower() else stem)
