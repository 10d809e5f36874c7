"""Per-head reference ranking (paper section 2.1; Supplementary Notes 1 and 13).

Evaluable universe: reference TFs in the panel with at least one reference target in the panel; candidate
pairs are (TF, gene) for every other panel gene co-observed with the TF in at least one cell. Label = the pair
is a reference edge. Per source (head, layer mean, correlation) we report AUROC (Mann-Whitney, average ranks
for ties), AUPRC (average precision, step-wise as scikit-learn), precision@k and top-k F1 (top-k scored pairs
as the predicted network), and the mean per-TF AUROC. Nulls: a label-shuffle permutation null for AUROC
(``n_null`` shuffles shared by all sources) and the exact hypergeometric law of top-k hits under label
shuffling; Benjamini-Hochberg q-values across the attention heads of each (reference, direction, metric).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import hypergeom

from ..io import schemas
from .edges import EdgeScores, EdgeSet, HeadEdges
from ..io.references import ReferenceNetwork
from .stats import benjamini_hochberg, hanley_mcneil_ci


RANK_BLOCK_BYTES = 512 * 2 ** 20   # sources ranked at a time (rank_heads)
RANK_ELEMENT_BYTES = 56   # held per (source, TF, gene) score while a block is ranked (measured peak: tracemalloc)


@dataclass(frozen=True)
class Universe:
    """Candidate pairs: ``tf_rows`` (panel index of each evaluable TF), ``pair_mask`` ``[n_tf, G]`` bool and
    ``labels`` ``[n_tf, G]`` bool (reference edge)."""

    tf_rows: np.ndarray
    pair_mask: np.ndarray
    labels: np.ndarray

    @property
    def n_pos(self) -> int:
        return int(self.labels[self.pair_mask].sum())

    @property
    def n_neg(self) -> int:
        return int(self.pair_mask.sum()) - self.n_pos


@dataclass(frozen=True)
class HeadRanking:
    """``table``: tidy metrics (schema ``head_ranking``); ``per_tf``: per-TF AUROC (schema ``per_tf``)."""

    table: pd.DataFrame
    per_tf: pd.DataFrame
    params: dict


def reference_labels(panel: pd.DataFrame, reference: ReferenceNetwork) -> np.ndarray:
    """``[G, G]`` bool: (TF row, target column) is a reference edge between two distinct panel genes."""
    index = {s: i for i, s in enumerate(panel["symbol"].to_numpy())}
    labels = np.zeros((len(index), len(index)), dtype=bool)
    for tf, target in reference.pairs():
        if tf in index and target in index and tf != target:
            labels[index[tf], index[target]] = True
    return labels


def universe_from_labels(labels_all: np.ndarray, observed: np.ndarray) -> Universe:
    """Evaluable universe of a ``[G, G]`` label matrix: rows with a co-observed positive, their co-observed
    off-diagonal pairs."""
    mask_all = observed.copy()
    np.fill_diagonal(mask_all, False)
    tf_rows = np.nonzero((labels_all & mask_all).any(axis=1))[0].astype(np.int64)
    return Universe(tf_rows, mask_all[tf_rows], labels_all[tf_rows])


def evaluable_universe(panel: pd.DataFrame, reference: ReferenceNetwork, observed: np.ndarray) -> Universe:
    return universe_from_labels(reference_labels(panel, reference), observed)


def auroc_from_ranks(ranks: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """AUROC per row of ``ranks`` ``[S, N]`` for boolean labels ``pos`` ``[N]`` (or ``[..., N]`` broadcast)."""
    if pos.ndim == 1:
        return auroc_of_positives(ranks, np.flatnonzero(pos), pos.size)
    n_pos = pos.sum(axis=-1)
    n_neg = pos.shape[-1] - n_pos
    return ((ranks * pos).sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auroc_of_positives(ranks: np.ndarray, positives: np.ndarray, n: int) -> np.ndarray:
    """AUROC per row of ``ranks`` ``[..., n]`` whose positives are at the indices ``positives`` (Mann-Whitney from
    their rank sum: a gather of those ranks, not a pass over every pair, which is what makes permutation nulls
    over hundreds of thousands of pairs cheap)."""
    n_pos = positives.size
    return (ranks[..., positives].sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))


def shuffled_positives(labels: np.ndarray, n_draws: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The positives' indices under ``n_draws`` label shuffles (``rng.permutation(labels)`` in turn), to score with
    :func:`auroc_of_positives`."""
    return [np.flatnonzero(rng.permutation(labels)) for _ in range(n_draws)]


def ranks_and_order(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From one stable sort of ``flat`` ``[S, N]``: ascending average ranks ``[S, N]`` (ties averaged, as
    ``scipy.stats.rankdata``) and the descending order ``[S, N]`` (ties broken by position) that top-k reads.

    A tie group is a run of equal values in the sorted row: descending positions ``a..b`` hold ascending ranks
    ``n - a .. n - b``, whose mean ``n - (a + b) / 2`` is repeated over the run; no per-element group index is made
    (:data:`RANK_ELEMENT_BYTES` counts what is held)."""
    s, n = flat.shape
    order = np.argsort(-flat, axis=1, kind="stable")
    values = np.take_along_axis(flat, order, axis=1)
    starts = np.ones((s, n), dtype=bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    del values
    first = np.flatnonzero(starts)                              # tie groups, never spanning two rows
    del starts
    lengths = np.diff(first, append=s * n)
    first %= n
    mean = n - (2 * first + lengths - 1) / 2
    del first
    ranks = np.empty((s, n))
    np.put_along_axis(ranks, order, np.repeat(mean, lengths).reshape(s, n), axis=1)
    return ranks, order


def top_k_f1(flat: np.ndarray, labels: np.ndarray, k: int, order: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` F1 per row of ``flat`` ``[S, N]`` (the ``k`` highest-scored pairs as the predicted network, ties
    broken by position) and the hit counts ``[S]``; ``order`` reuses :func:`ranks_and_order`'s sort."""
    if order is None:
        order = np.argsort(-flat, axis=1, kind="stable")
    hits = labels[order[:, :k]].sum(axis=1)
    return f1_from_hits(hits, k, int(labels.sum())), hits


def f1_from_hits(hits: np.ndarray, k: int, n_pos: int) -> np.ndarray:
    """F1 of a predicted network of ``k`` pairs holding ``hits`` ``[S]`` of the ``n_pos`` reference pairs (0 with no
    hit)."""
    precision, recall = hits / k, hits / max(n_pos, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(hits > 0, 2 * precision * recall / (precision + recall), 0.0)


def average_precision(scores: np.ndarray, labels: np.ndarray, order: np.ndarray | None = None) -> float:
    """Average precision with tied scores as one threshold (scikit-learn's definition); ``order`` reuses a
    descending sort of ``scores`` (:func:`ranks_and_order`)."""
    if order is None:
        order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / max(y.sum(), 1)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def source_blocks(edges: EdgeScores | HeadEdges | EdgeSet, per_source: int, block_bytes: int):
    """``edges`` a block of sources at a time (in :attr:`sources` order), each block holding at most ``block_bytes``
    at ``per_source`` bytes a source (at least one source)."""
    step = max(1, block_bytes // max(per_source, 1))
    for part in (edges.parts if isinstance(edges, EdgeSet) else (edges,)):
        n = len(part.sources)
        for start in range(0, n, step):
            yield part.take(list(range(start, min(n, start + step))))


def rank_heads(edges: EdgeScores | HeadEdges | EdgeSet, reference: ReferenceNetwork, *, direction: str = "tf_to_target",
               top_k: tuple[int, ...] = (20, 50, 100, 200, 500), n_null: int = 200, seed: int = 0,
               block_bytes: int = RANK_BLOCK_BYTES) -> HeadRanking:
    """Score every source of ``edges`` against ``reference`` (see module doc), ``block_bytes`` of oriented scores,
    pair scores and ranks at a time (at V2-316M's 324 heads, 250 TFs and 3,500 genes, all at once would be 6.8 GB;
    the shuffles are the same for every block). Raises ``ValueError`` when the evaluable universe is empty (no
    reference TF with a target in the panel)."""
    uni = evaluable_universe(edges.panel, reference, edges.observed)
    if uni.tf_rows.size == 0 or uni.n_pos == 0:
        raise ValueError(f"no evaluable pairs: no {reference.name} TF has a reference target in the gene panel")
    y = uni.labels[uni.pair_mask]                                                # [N]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    n_sources, n_tf = len(edges.sources), uni.tf_rows.size
    ks = [k for k in top_k if k <= y.size]
    auroc, auprc, null = np.empty(n_sources), np.empty(n_sources), np.empty((n_sources, n_null))
    f1, hits = np.empty((len(ks), n_sources)), np.empty((len(ks), n_sources))
    tf_auroc = np.full((n_sources, n_tf), np.nan)
    per_tf_pos = uni.labels & uni.pair_mask                                     # [n_tf, G]
    per_tf_n_pos, per_tf_excluded = per_tf_pos.sum(axis=1), (~uni.pair_mask).sum(axis=1)
    evaluable_tfs = np.nonzero((per_tf_n_pos > 0) & (per_tf_n_pos < uni.pair_mask.sum(axis=1)))[0]
    shuffles = shuffled_positives(y, n_null, np.random.default_rng(seed))        # the same for every block
    start = 0
    per_source = RANK_ELEMENT_BYTES * n_tf * uni.pair_mask.shape[1]
    positives = per_tf_pos.astype(np.float64)
    for block in source_blocks(edges, per_source, block_bytes):
        at = slice(start, start + len(block.sources))
        start = at.stop
        oriented = np.nan_to_num(block.oriented(uni.tf_rows, direction), copy=False, nan=0.0)  # [s, n_tf, G], own
        flat = oriented[:, uni.pair_mask]                                         # [s, N]
        ranks, order = ranks_and_order(flat)                                      # one sort serves every metric
        auroc[at] = auroc_from_ranks(ranks, y)
        null[at] = np.stack([auroc_of_positives(ranks, pos, y.size) for pos in shuffles], axis=1)
        for i, k in enumerate(ks):
            f1[i, at], hits[i, at] = top_k_f1(flat, y, k, order)
        auprc[at] = [average_precision(f, y, o) for f, o in zip(flat, order)]
        del ranks, order, flat
        # per-TF AUROC from one sort of every (source, TF) row: pairs outside the TF's candidates sort below them
        # at -inf, which shifts its candidates' ranks by their number
        oriented[:, ~uni.pair_mask] = -np.inf
        ranks = ranks_and_order(oriented.reshape(-1, oriented.shape[-1]))[0].reshape(oriented.shape)
        del oriented
        n_pos_t, n_neg_t = per_tf_n_pos, uni.pair_mask.sum(axis=1) - per_tf_n_pos
        rank_sum = np.einsum("stg,tg->st", ranks, positives) - n_pos_t * per_tf_excluded                # [s, n_tf]
        del ranks
        with np.errstate(invalid="ignore", divide="ignore"):
            tf_block = (rank_sum - n_pos_t * (n_pos_t + 1) / 2) / (n_pos_t * n_neg_t)
        tf_auroc[at, evaluable_tfs] = tf_block[:, evaluable_tfs]
    p_auroc = (1 + (null >= auroc[:, None]).sum(axis=1)) / (n_null + 1)
    lo, hi = hanley_mcneil_ci(auroc, n_pos, n_neg)
    rows = []

    def add(metric, values, p=None, ci=(None, None)):
        for s, src in enumerate(edges.sources.itertuples(index=False)):
            rows.append((src.edge_type, src.layer, src.head, metric, float(values[s]),
                         np.nan if ci[0] is None else float(ci[0][s]), np.nan if ci[1] is None else float(ci[1][s]),
                         np.nan if p is None else float(p[s])))

    add("auroc", auroc, p_auroc, (lo, hi))
    add("auroc_null_mean", null.mean(axis=1))
    add("auprc", auprc)
    for i, k in enumerate(ks):
        p_hits = hypergeom.sf(hits[i] - 1, y.size, n_pos, k)
        add(f"precision_at_{k}", hits[i] / k, p_hits)
        add(f"f1_at_{k}", f1[i], p_hits)
    per_tf_rows = []
    tf_symbols = edges.panel["symbol"].to_numpy()[uni.tf_rows]
    for t in evaluable_tfs:
        lab = uni.labels[t][uni.pair_mask[t]]
        for s, src in enumerate(edges.sources.itertuples(index=False)):
            per_tf_rows.append((src.edge_type, src.layer, src.head, tf_symbols[t], tf_auroc[s, t],
                                int(lab.sum()), int(lab.size - lab.sum())))
    if np.isfinite(tf_auroc).any():
        add("per_tf_auroc_mean", np.nanmean(tf_auroc, axis=1))
    table = pd.DataFrame(rows, columns=["edge_type", "layer", "head", "metric", "value", "ci_low", "ci_high", "p"])
    table.insert(0, "direction", direction)
    table.insert(0, "reference", reference.name)
    table["n_pos"], table["n_neg"] = n_pos, n_neg
    table["q"] = np.nan
    for (etype, metric), grp in table.groupby(["edge_type", "metric"]):
        if grp["p"].notna().any():
            table.loc[grp.index, "q"] = benjamini_hochberg(grp["p"].to_numpy())
    table["rank"] = table.groupby(["edge_type", "metric"])["value"].rank(ascending=False, method="min").astype(int)
    per_tf = pd.DataFrame(per_tf_rows, columns=["edge_type", "layer", "head", "tf", "auroc", "n_pos", "n_neg"])
    per_tf.insert(0, "direction", direction)
    per_tf.insert(0, "reference", reference.name)
    params = {"reference": reference.name, "direction": direction, "n_tfs": int(uni.tf_rows.size), "n_pos": n_pos,
              "n_neg": n_neg, "top_k": list(top_k), "n_null": n_null, "seed": seed,
              "universe": "reference TFs in panel x co-observed panel genes"}
    return HeadRanking(schemas.validate("head_ranking", table), schemas.validate("per_tf", per_tf), params)
