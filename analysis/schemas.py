"""Column declarations and validators for every tidy result table (one place, checked on write and before drawing)."""
from __future__ import annotations

import pandas as pd


class SchemaError(ValueError):
    """A result table is missing a declared column or has NaN where none is allowed."""


# name -> (required columns, columns allowed to hold NaN)
HEAD_RANKING = (
    ("reference", "direction", "edge_type", "layer", "head", "metric", "value",
     "ci_low", "ci_high", "p", "q", "n_pos", "n_neg", "rank"),
    ("ci_low", "ci_high", "p", "q"),
)
PER_TF = (("reference", "direction", "edge_type", "layer", "head", "tf", "auroc", "n_pos", "n_neg"), ())
PANEL = (("gene_index", "gene_id", "symbol", "is_hvg", "is_tf", "is_perturbed", "n_cells"), ())
REFERENCE_EDGES = (("reference", "tf", "target", "mode", "confidence"), ())
STAGE_TIMINGS = (("stage", "seconds", "skipped"), ())

TABLES = {
    "head_ranking": HEAD_RANKING,
    "per_tf": PER_TF,
    "panel": PANEL,
    "reference_edges": REFERENCE_EDGES,
    "stage_timings": STAGE_TIMINGS,
}


def validate(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Raise :class:`SchemaError` naming the first missing column or NaN-holding column of table ``name``."""
    required, nullable = TABLES[name]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise SchemaError(f"table {name!r} is missing column(s) {missing}; has {list(frame.columns)}")
    for col in required:
        if col not in nullable and frame[col].isna().any():
            raise SchemaError(f"table {name!r} column {col!r} has {int(frame[col].isna().sum())} NaN value(s)")
    return frame
