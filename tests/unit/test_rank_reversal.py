"""Rank reversal against brute force: the weighted AUROC equals scikit-learn's with sample weights, and the TF
bootstrap's flip share equals resampling the TFs' pairs outright and scoring each resample with scikit-learn."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from analysis.io.references import ReferenceNetwork
from analysis.scoring.edges import EdgeScores
from analysis.scoring.rank_reversal import (STABLE_FLIP, WeightedAUROC, describe, independent_bootstrap_flip,
                                            paired_bootstrap_flip, perturbation_flips, run_order_flip,
                                            tf_bootstrap_flip)
from analysis.scoring.ranking import evaluable_universe


@pytest.mark.parametrize("ties", [False, True])
def test_weighted_auroc_equals_sklearn_with_sample_weights(rng, ties):
    scores = rng.normal(size=400)
    if ties:
        scores = np.round(scores, 1)
    labels = rng.random(400) < 0.2
    weights = rng.integers(0, 4, 400).astype(float)
    assert WeightedAUROC(scores, labels)(weights) == pytest.approx(roc_auc_score(labels, scores,
                                                                                 sample_weight=weights))


def two_heads(rng, n_tf=6, n_genes=40, lead=0.15):
    symbols = [f"TF{i}" for i in range(n_tf)] + [f"G{i}" for i in range(n_genes - n_tf)]
    scores = np.round(rng.random((2, n_genes, n_genes)), 2)            # rounded: ties inside and across TFs
    targets = {t: rng.choice(np.arange(n_tf, n_genes), 4, replace=False) for t in range(n_tf)}
    for t, genes in targets.items():
        scores[0, t, genes] += lead                                     # head 0 leads by a little
        scores[1, t, genes] += lead / 2
    edges = pd.DataFrame({"reference": "toy", "tf": [symbols[t] for t, g in targets.items() for _ in g],
                          "target": [symbols[x] for g in targets.values() for x in g], "mode": "Activation",
                          "confidence": "NA"})
    sources = pd.DataFrame({"edge_type": "attention", "layer": [3, 1], "head": [0, 2]})
    observed = np.ones((n_genes, n_genes), dtype=bool)
    return (EdgeScores(scores, sources, observed, pd.DataFrame({"symbol": symbols}), {}),
            ReferenceNetwork("toy", edges, {}))


def test_tf_bootstrap_flip_equals_resampling_the_tfs_pairs_outright(rng):
    edges, ref = two_heads(rng)
    got = tf_bootstrap_flip(edges, ref, direction="tf_to_target", n_boot=60, seed=5)
    uni = evaluable_universe(edges.panel, ref, edges.observed)
    per_tf = [(edges.scores[:, uni.tf_rows[t], uni.pair_mask[t]], uni.labels[t][uni.pair_mask[t]])
              for t in range(uni.tf_rows.size)]
    draws = np.random.default_rng(5)
    flips = used = 0
    for _ in range(60):
        pick = draws.integers(0, uni.tf_rows.size, uni.tf_rows.size)
        y = np.concatenate([per_tf[t][1] for t in pick])
        if y.all() or not y.any():
            continue
        a, b = (roc_auc_score(y, np.concatenate([per_tf[t][0][s] for t in pick])) for s in (0, 1))
        flips += b >= a
        used += 1
    assert got["n_boot"] == used and got["p_flip"] == pytest.approx(flips / used)
    y_all = np.concatenate([p[1] for p in per_tf])
    assert got["first_value"] == pytest.approx(roc_auc_score(y_all, np.concatenate([p[0][0] for p in per_tf])))
    assert got["n"] == uni.tf_rows.size and got["unit"] == "TF bootstrap"


def test_a_clear_lead_is_stable_and_a_coin_toss_is_not(rng):
    a = rng.normal(0.7, 0.05, 80)
    assert paired_bootstrap_flip(a, a - 0.05) < STABLE_FLIP
    b = a + rng.normal(0, 0.05, 80)
    b += a.mean() - b.mean()                                             # the same mean: half the draws flip
    assert 0.2 < paired_bootstrap_flip(a, b) < 0.8


def test_perturbation_flips_name_the_pages_orderings(rng):
    """The best head and layer by mean per-perturbation AUROC, ordered as the pages order them, with their flip
    share equal to a paired bootstrap of exactly those two columns."""
    rows = []
    for p in range(30):
        for layer in range(3):
            for head in range(2):
                rows.append({"perturbation": f"P{p}", "edge_type": "attention", "layer": layer, "head": head,
                             "auroc": 0.5 + 0.05 * layer + 0.01 * head + rng.normal(0, 0.05)})
            rows.append({"perturbation": f"P{p}", "edge_type": "attention_layer_mean", "layer": layer, "head": -1,
                         "auroc": 0.5 + 0.02 * layer + rng.normal(0, 0.05)})
    per = pd.DataFrame(rows)
    out = perturbation_flips(per, n_boot=300, seed=1).set_index("ordering")
    wide = per[per["edge_type"] == "attention"].pivot_table(index="perturbation", columns=["layer", "head"],
                                                            values="auroc")
    (a, b) = wide.mean().sort_values(ascending=False).index[:2]
    head = out.loc["best head vs second"]
    assert (head["first"], head["second"]) == (f"L{a[0]}H{a[1]}", f"L{b[0]}H{b[1]}")
    assert head["p_flip"] == paired_bootstrap_flip(wide[a].to_numpy(), wide[b].to_numpy(), n_boot=300, seed=1)
    assert head["stable"] == (head["p_flip"] < STABLE_FLIP)
    assert out.loc["best layer vs second", "first"].startswith("L")
    assert "flips in" in describe(head) and ("NOT a stable" in describe(head)) == (not head["stable"])


def test_two_runs_are_compared_paired_on_shared_perturbations_and_apart_otherwise(rng):
    index = [f"P{i}" for i in range(40)]
    a = pd.Series(rng.normal(0.62, 0.05, 40), index=index)
    b = pd.Series(rng.normal(0.60, 0.05, 40), index=index)
    order = run_order_flip({"low": b, "high": a, "short": pd.Series([0.9])}, n_boot=300, seed=2)
    assert (order["first"], order["second"]) == ("high", "low") and order["unit"].endswith("(paired)")
    assert order["p_flip"] == paired_bootstrap_flip(a.sort_index().to_numpy(), b.sort_index().to_numpy(), n_boot=300,
                                                    seed=2)                        # aligned by perturbation
    apart = run_order_flip({"high": a, "low": b.iloc[:30]}, n_boot=300, seed=2)
    assert apart["unit"].endswith("(each run's own)")
    assert apart["p_flip"] == independent_bootstrap_flip(a.to_numpy(), b.iloc[:30].to_numpy(), n_boot=300, seed=2)
