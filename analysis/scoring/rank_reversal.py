"""Rank reversal: how often an ordering the pages show (the best head before the second, one layer before another,
model A before model B) flips when the units it rests on are resampled.

The paper orders noisy estimates (324 heads by AUROC, 18 layers, two models) without saying how stable the order is.
Here each shown pair gets ``p_flip``, the share of bootstrap draws in which the second scores at least as high as the
first, and an ordering is called stable only when ``p_flip`` < :data:`STABLE_FLIP`:

- reference ranking (:func:`tf_bootstrap_flip`): the reference's TFs are resampled with replacement (a TF drawn
  twice counts twice), and both heads' global AUROCs are recomputed on the resampled pairs, exactly as a weighted
  Mann-Whitney statistic (ties count one half);
- perturbation-first (:func:`paired_bootstrap_flip`): the perturbations are resampled and the two sources' mean
  per-perturbation AUROCs compared, paired (both scored on the same perturbations);
- two models (:func:`independent_bootstrap_flip`): each run's perturbations resampled on its own.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..io.references import ReferenceNetwork
from .edges import EdgeScores, HeadEdges
from .ranking import evaluable_universe
from .stats import auroc_from_counts

STABLE_FLIP = 0.05
N_BOOT = 200     # the paper's bootstrap iterations (section 4.6)


class WeightedAUROC:
    """AUROC of ``scores`` ``[N]`` for bool ``labels`` ``[N]`` under any pair weights ``w`` ``[N]``: the sum over
    (positive i, negative j) of w_i w_j ([s_i > s_j] + [s_i = s_j] / 2), over (sum w_pos)(sum w_neg). The scores are
    sorted once into tie groups (each pair's rank among the distinct scores); each weighting then costs two weighted
    bincounts (O(N), nothing of size draws x N)."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray):
        distinct, group = np.unique(scores, return_inverse=True)
        self.n_groups = distinct.size
        self.positives, self.negatives = np.flatnonzero(labels), np.flatnonzero(~labels.astype(bool))
        self.pos_group, self.neg_group = group[self.positives], group[self.negatives]

    def __call__(self, w: np.ndarray) -> float:
        return auroc_from_counts(np.bincount(self.pos_group, weights=w[self.positives], minlength=self.n_groups),
                                 np.bincount(self.neg_group, weights=w[self.negatives], minlength=self.n_groups))


def tf_bootstrap_flip(edges: EdgeScores | HeadEdges, reference: ReferenceNetwork, *, direction: str,
                      n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """For the two sources of ``edges`` (first: the one shown on top), their global AUROCs on ``reference`` and the
    share of TF-bootstrap draws in which the second's AUROC is at least the first's (``n``: the TFs resampled).
    Draws whose resampled pairs hold no positive or no negative are left out (``n_boot`` reports the draws used).
    Memory: the two sources' scores over the evaluable pairs and one draw's weights."""
    if len(edges.sources) != 2:
        raise ValueError(f"two sources to compare, got {len(edges.sources)}")
    uni = evaluable_universe(edges.panel, reference, edges.observed)
    oriented = np.nan_to_num(edges.oriented(uni.tf_rows, direction), nan=0.0)        # [2, n_tf, G]
    labels = uni.labels[uni.pair_mask]                                                # [N]
    first, second = (WeightedAUROC(s, labels) for s in oriented[:, uni.pair_mask])
    del oriented
    row_of_pair = np.broadcast_to(np.arange(uni.tf_rows.size)[:, None], uni.pair_mask.shape)[uni.pair_mask]
    pos_per_tf = np.bincount(row_of_pair[labels], minlength=uni.tf_rows.size)
    neg_per_tf = np.bincount(row_of_pair[~labels], minlength=uni.tf_rows.size)
    rng = np.random.default_rng(seed)
    flips, used = 0, 0
    for _ in range(n_boot):
        counts = np.bincount(rng.integers(0, uni.tf_rows.size, uni.tf_rows.size), minlength=uni.tf_rows.size)
        if counts @ pos_per_tf == 0 or counts @ neg_per_tf == 0:
            continue
        w = counts[row_of_pair].astype(np.float64)
        flips += second(w) >= first(w)
        used += 1
    ones = np.ones(labels.size)
    return {"first_value": first(ones), "second_value": second(ones), "p_flip": flips / used if used else np.nan,
            "n_boot": used, "unit": "TF bootstrap", "n": int(uni.tf_rows.size)}


def paired_bootstrap_flip(first: np.ndarray, second: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0) -> float:
    """Share of perturbation-bootstrap draws in which ``second``'s mean is at least ``first``'s (both ``[P]``, one
    value per perturbation, the same perturbations in the same order)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, first.size, (n_boot, first.size))
    return float((second[idx].mean(axis=1) >= first[idx].mean(axis=1)).mean())


def independent_bootstrap_flip(first: np.ndarray, second: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0) -> float:
    """As :func:`paired_bootstrap_flip` for two runs scored on their own perturbations (each resampled on its own)."""
    rng = np.random.default_rng(seed)
    a = first[rng.integers(0, first.size, (n_boot, first.size))].mean(axis=1)
    b = second[rng.integers(0, second.size, (n_boot, second.size))].mean(axis=1)
    return float((b >= a).mean())


def perturbation_flips(per: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """From a run's per-perturbation AUROCs (schema ``perturbation_auroc``): the best attention head before the second
    and the best layer (head mean) before the second, by mean AUROC over the perturbations both were scored on, each
    with its paired-bootstrap ``p_flip`` and ``stable``. Rows: ordering, first, second, first_value, second_value,
    p_flip, n, unit, stable."""
    rows = []
    for ordering, edge_type, label in (("best head vs second", "attention", lambda l, h: f"L{l}H{h}"),
                                       ("best layer vs second", "attention_layer_mean", lambda l, h: f"L{l}")):
        wide = (per[per["edge_type"] == edge_type].pivot_table(index="perturbation", columns=["layer", "head"],
                                                                 values="auroc").dropna())
        if wide.shape[1] < 2 or wide.shape[0] < 2:
            continue
        means = wide.mean().sort_values(ascending=False)
        (a, b) = means.index[:2]
        rows.append({"ordering": ordering, "first": label(*a), "second": label(*b), "first_value": means.iloc[0],
                     "second_value": means.iloc[1], "n": int(len(wide)), "unit": "perturbation bootstrap",
                     "p_flip": paired_bootstrap_flip(wide[a].to_numpy(), wide[b].to_numpy(), n_boot=n_boot,
                                                     seed=seed)})
    out = pd.DataFrame(rows, columns=["ordering", "first", "second", "first_value", "second_value", "n", "unit",
                                      "p_flip"])
    out["stable"] = out["p_flip"] < STABLE_FLIP
    return out


def run_order_flip(values: dict[str, pd.Series], *, n_boot: int = N_BOOT, seed: int = 0) -> dict | None:
    """The two runs with the highest mean of ``values`` (run label -> per-perturbation AUROC indexed by perturbation),
    first before second, and how often that flips: paired over the perturbations when both runs scored the same
    ones, each run's own perturbations resampled otherwise. None with fewer than two runs of two or more values."""
    values = {k: v.dropna() for k, v in values.items() if v.dropna().size >= 2}
    if len(values) < 2:
        return None
    (a, first), (b, second) = sorted(values.items(), key=lambda kv: kv[1].mean(), reverse=True)[:2]
    paired = set(first.index) == set(second.index)
    p_flip = (paired_bootstrap_flip(first.sort_index().to_numpy(), second.sort_index().to_numpy(), n_boot=n_boot,
                                    seed=seed) if paired else
              independent_bootstrap_flip(first.to_numpy(), second.to_numpy(), n_boot=n_boot, seed=seed))
    return {"ordering": "best run vs second", "first": a, "second": b, "first_value": float(first.mean()),
            "second_value": float(second.mean()), "p_flip": p_flip, "stable": p_flip < STABLE_FLIP,
            "unit": "perturbation bootstrap" + (" (paired)" if paired else " (each run's own)"),
            "n": int(min(first.size, second.size))}


def describe(row: dict | pd.Series) -> str:
    """One sentence for a page: the ordering, its values and how often it flips, labelled stable or not."""
    verdict = "a stable ordering" if row["p_flip"] < STABLE_FLIP else "NOT a stable ordering"
    return (f"{row['first']} ({row['first_value']:.3f}) before {row['second']} ({row['second_value']:.3f}): the order "
            f"flips in {row['p_flip']:.0%} of {row['unit']} draws, {verdict}.")
