"""Reference networks: TRRUST v2 raw TSV (all pairs, or the direction-known ones), DoRothEA (confidence-filtered) and
CollecTRI (signed TF-target table) -> :class:`ReferenceNetwork`.

Edges are TF -> target symbol pairs (upper-cased), deduplicated; mode is Activation / Repression / Unknown
(TRRUST) or the sign of DoRothEA's ``mor`` / CollecTRI's sign. Evaluation restricts them to an evaluable universe (paper
Supplementary Notes 1 and 13): TFs and targets both in the gene panel.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .cells import InputError

TRRUST_MODES = {"Activation", "Repression", "Unknown"}
DOROTHEA_LEVELS = "ABCDE"
KINDS = ("trrust", "trrust_direction_known", "dorothea", "collectri")
DIRECTED_MODES = {"Activation", "Repression"}


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


def load_trrust(path: str | Path, name: str = "TRRUST", *, direction_known: bool = False) -> ReferenceNetwork:
    """TRRUST v2 raw layout: tab-separated, no header, columns TF, target, mode, PMIDs (a header row is allowed).
    ``direction_known`` keeps the pairs with at least one Activation or Repression row (Supplementary Note 13.5: 4,859
    of TRRUST v2's 8,427 unique human pairs), each with that known mode."""
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
    if direction_known:
        edges = edges[edges["mode"].isin(DIRECTED_MODES)]
    edges = edges.drop_duplicates(["tf", "target"]).reset_index(drop=True)
    edges.insert(0, "reference", name)
    edges["confidence"] = "NA"
    kind = "trrust_direction_known" if direction_known else "trrust"
    return ReferenceNetwork(name, edges, {"kind": kind, "path": str(p), "n_edges": len(edges)})


def load_collectri(path: str | Path, name: str = "CollecTRI") -> ReferenceNetwork:
    """CollecTRI as a table (comma- or tab-separated, with a header): TF column ``tf`` or ``source``, ``target``, and
    the sign in ``sign``, ``mor`` or ``weight`` (positive: Activation, negative: Repression)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"reference file {p} does not exist")
    try:
        raw = pd.read_csv(p, sep=None, engine="python", dtype=str)
    except Exception as exc:
        raise InputError(f"{p} is not a readable CollecTRI table ({exc})") from exc
    tf_col = next((c for c in ("tf", "source") if c in raw.columns), None)
    sign_col = next((c for c in ("sign", "mor", "weight") if c in raw.columns), None)
    if tf_col is None or sign_col is None or "target" not in raw.columns:
        raise InputError(f"{p} is not a CollecTRI table: it needs columns tf (or source), target and sign (or mor / "
                         f"weight); has {list(raw.columns)}")
    sign = pd.to_numeric(raw[sign_col], errors="coerce")
    if sign.isna().any():
        line = int(sign.index[sign.isna()][0]) + 2
        raise InputError(f"{p} line {line}: {sign_col} {raw[sign_col][sign.isna()].iloc[0]!r} is not a number")
    edges = pd.DataFrame({
        "reference": name, "tf": raw[tf_col].str.strip().str.upper(), "target": raw["target"].str.strip().str.upper(),
        "mode": sign.map(lambda m: "Activation" if m > 0 else "Repression" if m < 0 else "Unknown"),
        "confidence": "NA"}).drop_duplicates(["tf", "target"]).reset_index(drop=True)
    return ReferenceNetwork(name, edges, {"kind": "collectri", "path": str(p), "n_edges": len(edges)})


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
    """Load ``kind:path`` (kind in :data:`KINDS`; a bare path is guessed from its name: DoRothEA, CollecTRI, else
    TRRUST). A ``word:`` prefix that is no kind (and no file) is refused, as is a reference with no edges."""
    head, sep, rest = spec.partition(":")
    if sep and head in KINDS:
        kind, path = head, rest
    elif sep and head.isidentifier() and not Path(spec).exists():
        raise InputError(f"reference {spec!r}: unknown kind {head!r}; write KIND:PATH with KIND one of {KINDS}")
    else:
        stem = Path(spec).name.lower()
        kind, path = ("dorothea" if "dorothea" in stem else "collectri" if "collectri" in stem else "trrust"), spec
    if kind == "dorothea":
        ref = load_dorothea(path, dorothea_min_confidence)
    elif kind == "collectri":
        ref = load_collectri(path)
    else:
        stem = Path(path).name.split(".")[0]
        name = "TRRUST" if "trrust" in stem.lower() else stem
        known = kind == "trrust_direction_known"
        ref = load_trrust(path, name=f"{name}_direction_known" if known else name, direction_known=known)
    if ref.edges.empty:
        kept = f" at confidence A-{dorothea_min_confidence}" if kind == "dorothea" else (
            " with a known direction" if kind == "trrust_direction_known" else "")
        raise InputError(f"reference {path} has no TF-target edges{kept}; check the file (and its filter)")
    return ref


PAIR_KINDS = ("string", "gmt")
STRING_COLUMNS = ("gene_a", "gene_b", "score")


def load_string(path: str | Path, min_score: float = 0.7, name: str | None = None) -> ReferenceNetwork:
    """STRING protein-protein interactions as an undirected pair reference (paper Supplementary Note 17): a
    tab-separated table with a header holding ``gene_a``, ``gene_b`` and the combined ``score`` (0-1, as the STRING
    API returns it; 0.7 = the paper's STRING >= 700), kept at ``score >= min_score``. Edges are stored as
    (gene_a, gene_b) with mode ``undirected``; ``params["undirected"]`` tells analyses to read them both ways."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"pair reference file {p} does not exist")
    try:
        raw = pd.read_csv(p, sep="\t", dtype=str)
    except Exception as exc:
        raise InputError(f"{p} is not a readable tab-separated STRING table ({exc})") from exc
    missing = [c for c in STRING_COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(f"{p} is not a STRING table: it needs columns {list(STRING_COLUMNS)}, lacks {missing}; "
                         f"has {list(raw.columns)}")
    score = pd.to_numeric(raw["score"], errors="coerce")
    if score.isna().any() or (score > 1).any():
        line = int(score.index[score.isna() | (score > 1)][0]) + 2
        raise InputError(f"{p} line {line}: score {raw['score'][line - 2]!r} is not a number in 0-1 (STRING's "
                         "combined score / 1000)")
    kept = raw[score >= min_score]
    name = name or f"STRING>={int(round(min_score * 1000))}"
    edges = pd.DataFrame({"reference": name, "tf": kept["gene_a"].str.strip().str.upper(),
                          "target": kept["gene_b"].str.strip().str.upper(), "mode": "undirected",
                          "confidence": score[score >= min_score].map(lambda v: f"{v:.3f}")})
    edges = edges[edges["tf"] != edges["target"]].drop_duplicates(["tf", "target"]).reset_index(drop=True)
    if edges.empty:
        raise InputError(f"pair reference {p} has no pair with score >= {min_score}; lower biology.string_min_score")
    return ReferenceNetwork(name, edges, {"kind": "string", "path": str(p), "n_edges": len(edges),
                                          "min_score": min_score, "undirected": True})


MAX_SET_SIZE = 500     # GSEA's default upper bound: larger sets (generic GO terms) make pairs of nearly everything


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """An MSigDB / Enrichr / Reactome GMT file: one set per line, ``name<TAB>description<TAB>gene<TAB>gene...``,
    as name -> upper-cased genes (blank fields dropped). An InputError names the first line that is not a set."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"gene-set file {p} does not exist")
    sets: dict[str, list[str]] = {}
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p} is not a readable GMT text file ({exc})") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        genes = [g.strip().upper() for g in fields[2:] if g.strip()]
        if len(fields) < 3 or not fields[0].strip() or not genes:
            raise InputError(f"{p} line {number} is not a gene set (GMT: name, description, then genes, "
                             "tab-separated)")
        sets[fields[0].strip()] = genes
    if not sets:
        raise InputError(f"{p} holds no gene set")
    return sets


def load_gene_set_pairs(path: str | Path, genes: set[str] | None = None, *, max_set_size: int = MAX_SET_SIZE,
                        name: str | None = None) -> ReferenceNetwork:
    """A GMT collection (:func:`read_gmt`; Reactome and GO BP are the paper's SN17 references) as an undirected pair
    reference: two genes are a pair when they share a set of at most ``max_set_size`` genes; only ``genes`` (upper-
    cased symbols, e.g. the run's panel) are kept, so the pairs grow with the panel, not with the collection.
    ``confidence`` is the number of sets the pair shares."""
    sets = read_gmt(path)
    shared: dict[tuple[str, str], int] = {}
    kept_sets = 0
    for members in sets.values():
        if len(set(members)) > max_set_size:
            continue
        kept_sets += 1
        inside = sorted({g for g in members if genes is None or g in genes})
        for i, a in enumerate(inside):
            for b in inside[i + 1:]:
                shared[(a, b)] = shared.get((a, b), 0) + 1
    name = name or f"{Path(path).stem} gene sets"
    if not shared:
        raise InputError(f"gene sets {path}: no two {'panel ' if genes is not None else ''}genes share a set of at "
                         f"most {max_set_size} genes ({len(sets)} sets read); check that symbols match")
    edges = pd.DataFrame([(name, a, b, "undirected", str(n)) for (a, b), n in shared.items()],
                         columns=["reference", "tf", "target", "mode", "confidence"])
    return ReferenceNetwork(name, edges, {"kind": "gmt", "path": str(path), "n_edges": len(edges),
                                          "n_sets": kept_sets, "max_set_size": max_set_size, "undirected": True})


def load_pair_reference(spec: str, min_score: float = 0.7, genes: set[str] | None = None) -> ReferenceNetwork:
    """Load an undirected pair reference ``kind:path`` (kind in :data:`PAIR_KINDS`: a STRING table, or a GMT gene-set
    collection restricted to ``genes``)."""
    head, sep, rest = spec.partition(":")
    if not sep or head not in PAIR_KINDS:
        raise InputError(f"pair reference {spec!r}: write KIND:PATH with KIND one of {PAIR_KINDS}")
    return load_string(rest, min_score) if head == "string" else load_gene_set_pairs(rest, genes)


def coregulation_pairs(reference: ReferenceNetwork, name: str | None = None) -> ReferenceNetwork:
    """Undirected pairs of genes that share a regulator in ``reference`` (functional co-membership, as pathway
    references hold); the embedded default's stand-in for STRING, whose real genes its simulated symbols lack."""
    rows = []
    for _tf, grp in reference.edges.groupby("tf"):
        targets = sorted(set(grp["target"]))
        rows += [(a, b) for i, a in enumerate(targets) for b in targets[i + 1:]]
    name = name or f"{reference.name} co-regulation"
    edges = pd.DataFrame(rows, columns=["tf", "target"]).drop_duplicates().reset_index(drop=True)
    edges = edges.assign(reference=name, mode="undirected", confidence="NA")[
        ["reference", "tf", "target", "mode", "confidence"]]
    return ReferenceNetwork(name, edges, {"kind": "coregulation", "source": reference.name, "n_edges": len(edges),
                                          "undirected": True, "path": reference.params.get("path")})
