"""Head-level summaries that choose ablation controls (paper section 2.5, Supplementary Note 14.3): each head's
attention entropy (for entropy-matched random heads) and the composite ranking (reference AUROC x the head's
layer's perturbation-first AUROC)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..io import mapped


def attention_entropy(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``[layers, heads]`` entropy (nats) of each head's attention over the gene panel, from the pooled store's
    per-head source rows ``sums`` ``[layers, heads, R, G]`` and their co-observation ``counts`` ``[R, G]``: every
    source row of the head's mean attention (pairs never co-observed dropped) renormalised over the panel keys, its
    Shannon entropy, averaged over rows. One head at a time, so memory stays at one head's ``[R, G]``. A
    panel-restricted entropy over the source genes' rows (the store keeps per-head rows for those only), so this
    ranks heads from diffuse to focused over the genes the analyses score, not over the whole input."""
    seen = np.asarray(counts) > 0
    divisor = np.maximum(counts, 1)
    out = np.full(sums.shape[:2], np.nan)
    for layer, head in np.ndindex(*sums.shape[:2]):
        a = np.where(seen, np.clip(np.asarray(sums[layer, head], dtype=np.float64), 0, None) / divisor, 0.0)
        totals = a.sum(-1, keepdims=True)                                   # [R, 1]
        p = np.divide(a, totals, out=np.zeros_like(a), where=totals > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)                 # [R]
        rows = totals[:, 0] > 0
        out[layer, head] = (h * rows).sum() / rows.sum() if rows.any() else np.nan
        mapped.release(sums)                                       # a mapped store: one head's pages at a time
    return out


def composite_order(head_auroc: pd.DataFrame, layer_perturbation_auroc: pd.Series) -> list[tuple[int, int]]:
    """Every (layer, head) by the paper's composite score, highest first: the head's reference AUROC (``head_auroc``:
    columns layer, head, value) times its layer's mean perturbation-first AUROC (``layer_perturbation_auroc``,
    indexed by layer); ties keep ``head_auroc``'s order."""
    score = head_auroc["value"].to_numpy() * head_auroc["layer"].map(layer_perturbation_auroc).to_numpy()
    order = np.argsort(-score, kind="stable")
    return list(head_auroc[["layer", "head"]].iloc[order].itertuples(index=False, name=None))
