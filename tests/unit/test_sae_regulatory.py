"""The CRISPRi regulatory test of SAE features (analysis.scoring.sae_regulatory): responding features by |Cohen's
d| and target preference against hand computations, the overlap's p against scipy's Fisher exact test, and a planted
case: features that respond to a TF's knock-down and fire on its targets pass, the same features against another
TF's targets do not, nor do responding features that fire elsewhere."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact

from analysis.scoring.sae_regulatory import (regulatory_table, regulatory_tests, responding_features,
                                            target_preference)


def test_responding_features_rank_by_cohens_d(rng):
    perturbed, control = rng.normal(size=(7, 12)), rng.normal(size=(11, 12))
    perturbed[:, 4] += 3
    perturbed[:, 9] -= 2
    control[:, 2] = perturbed[:, 2] = 0.0                        # constant in both: never chosen
    d = []
    for f in range(12):
        a, b = perturbed[:, f], control[:, f]
        pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
        d.append(abs(a.mean() - b.mean()) / pooled if pooled > 0 else -1)
    want = sorted(range(12), key=lambda f: -d[f])[:3]
    assert responding_features(perturbed, control, 3).tolist() == want and want[:2] == [4, 9]
    assert 2 not in responding_features(perturbed, control, 12).tolist()


def planted(rng, responders=((0, 5), (5, 10)), n_genes=60, n_features=40):
    """Two TFs (A, B) with disjoint targets; features 0-4 fire on A's targets, 5-9 on B's, the others on random other
    genes; the features in ``responders`` ranges rise in A's and in B's knock-down cells."""
    targets = {"A": np.zeros(n_genes, bool), "B": np.zeros(n_genes, bool)}
    targets["A"][:10], targets["B"][10:20] = True, True
    feature_genes = np.zeros((n_features, n_genes), bool)
    for f in range(5):
        feature_genes[f, rng.choice(10, 4, replace=False)] = True
        feature_genes[5 + f, 10 + rng.choice(10, 4, replace=False)] = True
    for f in range(10, n_features):
        feature_genes[f, rng.choice(np.arange(20, n_genes), 4, replace=False)] = True
    means = np.where(feature_genes, 1 + rng.random(feature_genes.shape), 0.0)
    activity = rng.random((90, n_features))
    groups = {"A": np.arange(0, 30), "B": np.arange(30, 60)}
    (a0, a1), (b0, b1) = responders
    activity[:30, a0:a1] += 2
    activity[30:60, b0:b1] += 2
    return activity, groups, np.arange(60, 90), means, feature_genes, targets


def test_planted_regulatory_features_pass_and_rotated_targets_do_not(rng):
    activity, groups, control, means, feature_genes, targets = planted(rng)
    universe = np.ones(feature_genes.shape[1], bool)
    table = regulatory_table(3, activity, groups, control, means, feature_genes, targets, universe, m=5, n_null=300,
                             seed=0)
    table = table.set_index("tf")
    assert table["passes"].all() and not table["rotated_passes"].any()
    assert set(table.loc["A", "responding"].split(",")) == set("01234") and table.loc["A", "rotated_tf"] == "B"
    genes = feature_genes[:5].any(axis=0)
    a = int((genes & targets["A"]).sum())
    b, c = int(genes.sum()) - a, 10 - a
    d = universe.size - a - b - c
    assert table.loc["A", "overlap"] == a and table.loc["A", "feature_genes"] == int(genes.sum())
    assert table.loc["A", "p_hypergeom"] == pytest.approx(fisher_exact([[a, b], [c, d]], alternative="greater")[1])
    assert table.loc["A", "p"] == pytest.approx(1 / 301)                 # no random set of 5 features does as well
    assert table.loc["A", "preference"] == pytest.approx(6.0)            # all activation on 10 of 60 genes
    again = regulatory_table(3, activity, groups, control, means, feature_genes, targets, universe, m=5, n_null=300,
                             seed=0)
    pd.testing.assert_frame_equal(again.set_index("tf"), table)
    registered = pd.DataFrame(regulatory_tests(table.reset_index(), "TRRUST").rows)
    assert len(registered) == 2 and not registered["confirmatory"].any()
    assert registered["hypothesis"].iloc[0] == "L3 features responding to A knock-down prefer its TRRUST targets"


def test_features_unrelated_to_the_targets_do_not_pass(rng):
    activity, groups, control, means, feature_genes, targets = planted(rng, responders=((20, 25), (25, 30)))
    table = regulatory_table(0, activity, groups, control, means, feature_genes, targets, np.ones(60, bool), m=5,
                             n_null=200, seed=1)
    assert not table["passes"].any() and (table["overlap"] == 0).all() and (table["preference"] == 0).all()


def test_target_preference_equals_a_hand_computation():
    means = np.array([[1.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    targets = np.array([True, False, True, False])
    universe = np.array([True, True, True, False])
    # feature 0: 3 of its 4 (over the universe) on targets, targets are 2 of 3 universe genes -> (3/4) / (2/3)
    pref = target_preference(means, targets, universe)
    assert pref[0] == pytest.approx(0.75 / (2 / 3)) and np.isnan(pref[1]) and np.isnan(pref[2])
