"""Metrics against independent references: statsmodels BH, scikit-learn AUROC / AUPRC, hand-counted top-k."""
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from statsmodels.stats.multitest import multipletests

from analysis.scoring.edges import EdgeScores, HeadEdges
from analysis.scoring.ranking import RANK_ELEMENT_BYTES, average_precision, rank_heads
from analysis.io.references import ReferenceNetwork
from analysis.scoring.stats import benjamini_hochberg


def test_bh_matches_statsmodels(rng):
    p = np.concatenate([rng.uniform(size=200), rng.uniform(0, 0.01, size=20), [1.0, 0.0]])
    assert np.allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1])


def test_bh_ignores_nan():
    q = benjamini_hochberg(np.array([0.01, np.nan, 0.04]))
    assert np.isnan(q[1]) and np.allclose(q[[0, 2]], multipletests([0.01, 0.04], method="fdr_bh")[1])


@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn(rng, ties):
    s = rng.normal(size=500)
    if ties:
        s = np.round(s, 1)
    y = rng.random(500) < 0.1
    assert average_precision(s, y) == pytest.approx(average_precision_score(y, s))


def _toy_edges(rng, n_genes=30, n_sources=3):
    symbols = [f"TF{i}" for i in range(4)] + [f"G{i}" for i in range(n_genes - 4)]
    panel = pd.DataFrame({"symbol": symbols})
    scores = rng.random((n_sources, n_genes, n_genes))
    scores[0, :4, 4:10] += 0.5  # source 0 favours TF -> G0..G5
    observed = np.ones((n_genes, n_genes), dtype=bool)
    observed[3, 20:] = False
    sources = pd.DataFrame({"edge_type": "attention", "layer": 0, "head": np.arange(n_sources)})
    edges = pd.DataFrame({"reference": "toy", "tf": ["TF0", "TF0", "TF1", "TF2", "TF3", "TF3", "TF1"],
                          "target": ["G0", "G1", "G2", "G10", "G3", "G21", "NOT_IN_PANEL"],
                          "mode": "Activation", "confidence": "NA"})
    return EdgeScores(scores, sources, observed, panel, {}), ReferenceNetwork("toy", edges, {})


@pytest.mark.parametrize("direction", ["tf_to_target", "target_to_tf", "symmetric"])
def test_rank_heads_matches_sklearn(rng, direction):
    edges, ref = _toy_edges(rng)
    res = rank_heads(edges, ref, direction=direction, top_k=(5, 20), n_null=50, seed=1)
    index = {s: i for i, s in enumerate(edges.panel["symbol"])}
    pairs = set(zip(ref.edges["tf"], ref.edges["target"]))
    for s in range(3):
        m = edges.scores[s]
        oriented = {"tf_to_target": m, "target_to_tf": m.T, "symmetric": (m + m.T) / 2}[direction]
        ys, xs = [], []
        for tf in ["TF0", "TF1", "TF2", "TF3"]:
            for g, j in index.items():
                if g != tf and edges.observed[index[tf], j]:
                    ys.append((tf, g) in pairs)
                    xs.append(oriented[index[tf], j])
        ys, xs = np.array(ys), np.array(xs)
        row = res.table[(res.table["head"] == s)].set_index("metric")["value"]
        assert row["auroc"] == pytest.approx(roc_auc_score(ys, xs))
        assert row["auprc"] == pytest.approx(average_precision_score(ys, xs))
        top5 = np.argsort(-xs, kind="stable")[:5]
        assert row["precision_at_5"] == pytest.approx(ys[top5].sum() / 5)
    assert res.params["n_pos"] == 5  # TF3 -> G21 is never co-observed, NOT_IN_PANEL is outside the universe
    assert res.table["q"].notna().sum() > 0 and res.table["rank"].min() == 1


def _head_edges_of(dense: EdgeScores, rows: list[int], n_columns: int, rng) -> HeadEdges:
    """The per-head form of ``dense`` as a store keeps it: sums (scores x counts) at ``rows``, columns at the first
    ``n_columns`` of them."""
    upper = np.triu(rng.integers(1, 9, dense.observed.shape))
    counts = (upper + np.triu(upper, 1).T) * (dense.observed & dense.observed.T)       # co-occurrence is symmetric
    sums = np.nan_to_num(dense.scores) * counts
    rows = np.array(rows)
    return HeadEdges(sums[:, rows], np.swapaxes(sums[:, :, rows[:n_columns]], 1, 2), rows, counts, dense.sources,
                     dense.panel, {})


@pytest.mark.parametrize("direction", ["tf_to_target", "target_to_tf", "symmetric"])
def test_per_head_rows_and_tf_columns_score_as_the_dense_matrices(rng, direction):
    """Rows at the TFs and a perturbed gene, columns at the TFs only (as the pooled store keeps them): every TF's
    scores, the ranking and a restriction to fewer genes equal the dense matrices'; a perturbed gene's row is read
    as regulator, and asking for it as key names what is kept."""
    dense, ref = _toy_edges(rng)
    tfs = [int(np.nonzero(dense.panel["symbol"].to_numpy() == tf)[0][0]) for tf in ("TF2", "TF0", "TF3", "TF1")]
    heads = _head_edges_of(dense, tfs + [7], 4, rng)
    truth = EdgeScores(np.where(heads.observed, dense.scores, np.nan), dense.sources, heads.observed, dense.panel, {})
    np.testing.assert_allclose(heads.oriented(np.array(tfs), direction), truth.oriented(np.array(tfs), direction))
    pd.testing.assert_frame_equal(rank_heads(heads, ref, direction=direction, n_null=20, seed=3).table,
                                  rank_heads(truth, ref, direction=direction, n_null=20, seed=3).table)
    np.testing.assert_allclose(heads.oriented(np.array([7]), "tf_to_target"), truth.oriented(np.array([7]),
                                                                                             "tf_to_target"))
    if direction != "tf_to_target":
        with pytest.raises(KeyError, match="as key .* kept for reference TFs"):
            heads.oriented(np.array([7]), direction)
    symbols = list(dense.panel["symbol"].iloc[[7, 20, tfs[3], tfs[2], tfs[1], 12]])      # TF2 left out
    small, small_truth = heads.restrict(symbols), truth.restrict(symbols)
    assert small.column_rows.tolist() == [2, 3, 4] and small.rows.tolist() == [2, 3, 4, 0]
    np.testing.assert_allclose(small.oriented(small.column_rows, direction),
                               small_truth.oriented(small.column_rows, direction))


def test_ranking_a_source_at_a_time_equals_ranking_all_at_once(rng):
    """Blocks of sources (bounded memory at V2-316M's 324 heads) give the same tables: same shuffles per block."""
    edges, ref = _toy_edges(rng, n_sources=5)
    whole = rank_heads(edges, ref, top_k=(5, 20), n_null=30, seed=2)
    blocked = rank_heads(edges, ref, top_k=(5, 20), n_null=30, seed=2, block_bytes=1)
    pd.testing.assert_frame_equal(whole.table, blocked.table)
    pd.testing.assert_frame_equal(whole.per_tf, blocked.per_tf)


@pytest.mark.parametrize("direction", ["tf_to_target", "symmetric"])
def test_ranking_holds_one_block_of_sources_at_a_time(rng, direction):
    """The block budget bounds what a block holds (scores, ranks, sort order and temporaries), as the plan counts it;
    a block of every layer mean is a view of the scores, not an [L, G, G] copy."""
    n_genes, n_tf, n_sources = 1500, 120, 12
    symbols = [f"TF{i}" for i in range(n_tf)] + [f"G{i}" for i in range(n_genes - n_tf)]
    ref = ReferenceNetwork("R", pd.DataFrame({"reference": "R", "tf": np.repeat(symbols[:n_tf], 10),
                                              "target": rng.choice(symbols[n_tf:], n_tf * 10), "mode": "unknown",
                                              "confidence": 1.0}), {})
    scores = rng.random((n_sources, n_genes, n_genes))
    sources = pd.DataFrame({"edge_type": "attention_layer_mean", "layer": np.arange(n_sources), "head": -1})
    edges = EdgeScores(scores, sources, np.ones((n_genes, n_genes), dtype=bool), pd.DataFrame({"symbol": symbols}), {})
    assert np.shares_memory(edges.take(list(range(n_sources))).scores, scores)
    block = 3 * RANK_ELEMENT_BYTES * n_tf * n_genes     # three sources a block; the universe masks add about 7%
    tracemalloc.start()
    try:
        rank_heads(edges, ref, direction=direction, n_null=10, block_bytes=block)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 1.2 * block, f"a block of {block / 2**20:.0f} MiB held {peak / 2**20:.0f} MiB"


def test_planted_head_is_significant(rng):
    edges, ref = _toy_edges(rng)
    res = rank_heads(edges, ref, direction="tf_to_target", n_null=99, seed=0)
    auroc = res.table[res.table["metric"] == "auroc"].set_index("head")
    assert auroc.loc[0, "rank"] == 1 and auroc.loc[0, "p"] <= 0.02


@pytest.mark.parametrize("n", [4, 5, 6])
def test_small_sample_spearman_is_exact_against_brute_force(n):
    """Brute force: scipy's rho of every reordering of y against x, one at a time."""
    from itertools import permutations

    from scipy.stats import spearmanr

    from analysis.scoring.stats import spearman
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=n), np.round(rng.normal(size=n), 1)
    observed = spearmanr(x, y).statistic
    null = [abs(spearmanr(x, y[list(order)]).statistic) for order in permutations(range(n))]
    rho, p = spearman(x, y)
    assert rho == pytest.approx(observed) and p == pytest.approx(np.mean(np.array(null) >= abs(observed) - 1e-12))


def test_a_perfect_order_of_four_layers_is_p_one_twelfth_not_zero():
    from analysis.scoring.stats import spearman
    assert spearman([0, 1, 2, 3], [0.1, 0.2, 0.3, 0.9]) == pytest.approx((1.0, 1 / 12))
    assert all(np.isnan(spearman([0, 1, 2], [1, 1, 1])))
