"""SAE feature statistics (analysis.scoring.sae_features) against independent references: per-gene means against a
loop over rows, enrichment p-values against scipy's Fisher exact test and q-values against statsmodels'
Benjamini-Hochberg, activation correlations against numpy's corrcoef on the dense matrices."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact
from statsmodels.stats.multitest import multipletests

from analysis.scoring.sae_features import (activation_correlation, feature_gene_means, gene_set_enrichment,
                                           latent_matrix, top_genes)


def sparse_latents(rng, rows=300, n_features=12, k=3):
    indices = np.stack([rng.choice(n_features, k, replace=False) for _ in range(rows)])
    values = rng.exponential(size=(rows, k)) * (rng.random((rows, k)) < 0.9)   # some latents ReLU-silenced (0)
    return indices, values


def test_feature_gene_means_equal_a_loop_over_rows(rng):
    indices, values = sparse_latents(rng)
    row_gene = rng.integers(0, 9, size=indices.shape[0])
    row_gene[row_gene == 8] = 7                                     # gene 8 never observed
    means, per_gene = feature_gene_means(indices, values, row_gene, 9, 12)
    want = np.zeros((12, 9))
    for r in range(indices.shape[0]):
        for f, v in zip(indices[r], values[r]):
            want[f, row_gene[r]] += v
    counts = np.bincount(row_gene, minlength=9)
    assert np.array_equal(per_gene, counts) and per_gene[8] == 0
    assert np.allclose(means, want / np.maximum(counts, 1)) and not means[:, 8].any()
    dense = latent_matrix(indices, values, 12).toarray()
    assert np.allclose(dense.sum(axis=0), [values[indices == f].sum() for f in range(12)])


def test_top_genes_keep_the_highest_positive_means():
    means = np.array([[0.0, 3.0, 1.0, 2.0], [0.0, 0.0, 0.5, 0.0]])
    assert top_genes(means, 2).tolist() == [[False, True, False, True], [False, False, True, False]]


def test_enrichment_equals_fisher_exact_and_bh(rng):
    genes = 60
    universe = rng.random(genes) < 0.85
    selected = rng.random((7, genes)) < 0.25
    gene_sets = rng.random((5, genes)) < 0.3
    selected[0], gene_sets[0] = np.arange(genes) < 15, np.arange(genes) < 15   # one strongly enriched pair
    universe[:15] = True
    table = gene_set_enrichment(selected, gene_sets, universe, [f"set{i}" for i in range(5)])
    p_all = np.ones((7, 5))
    for f in range(7):
        for s in range(5):
            a = int((selected[f] & gene_sets[s] & universe).sum())
            b = int((selected[f] & ~gene_sets[s] & universe).sum())
            c = int((~selected[f] & gene_sets[s] & universe).sum())
            d = int((~selected[f] & ~gene_sets[s] & universe).sum())
            p_all[f, s] = fisher_exact([[a, b], [c, d]], alternative="greater").pvalue if a > 0 else 1.0
            row = table[(table["feature"] == f) & (table["gene_set"] == f"set{s}")]
            assert len(row) == int(a > 0)
            if a:
                assert row["p"].iloc[0] == pytest.approx(p_all[f, s], rel=1e-9)
                assert row["overlap"].iloc[0] == a and row["universe"].iloc[0] == universe.sum()
                assert row["fold"].iloc[0] == pytest.approx(a / ((a + b) * (a + c) / universe.sum()))
    q_ref = multipletests(p_all.ravel(), method="fdr_bh")[1].reshape(7, 5)
    for r in table.itertuples():
        assert r.q == pytest.approx(q_ref[r.feature, int(r.gene_set[3:])], rel=1e-9)
    assert table.iloc[0]["feature"] == 0 and table.iloc[0]["gene_set"] == "set0" and table.iloc[0]["q"] < 1e-3


def test_activation_correlation_equals_numpy_corrcoef(rng):
    indices_a, values_a = sparse_latents(rng, rows=200, n_features=6)
    indices_b, values_b = sparse_latents(rng, rows=200, n_features=5)
    values_a[:, :] = np.where(indices_a == 5, 0.0, values_a)        # feature 5 of a never fires: constant
    a, b = latent_matrix(indices_a, values_a, 6), latent_matrix(indices_b, values_b, 5)
    got = activation_correlation(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):              # the constant feature's row is NaN there too
        ref = np.corrcoef(a.toarray().T, b.toarray().T)[:6, 6:]
    assert np.isnan(got[5]).all()
    assert np.allclose(got[:5], ref[:5])
    with pytest.raises(ValueError, match="different rows"):
        activation_correlation(a, b[:100])


def test_cell_programmes_against_direct_computations(rng):
    from scipy.stats import pearsonr

    from analysis.scoring.sae_features import best_feature_match, cell_feature_activity, regulon_activity

    indices, values = sparse_latents(rng, rows=400, n_features=10)
    row_cell = rng.integers(0, 20, size=400)
    activity = cell_feature_activity(indices, values, row_cell, 20, 10)
    dense = latent_matrix(indices, values, 10).toarray()
    for c in range(20):
        assert np.allclose(activity[c], dense[row_cell == c].mean(axis=0))
    expression = rng.normal(size=(20, 6))
    expression[:, 5] = 1.0                                          # constant gene: contributes 0
    tf = regulon_activity(expression, {"A": (np.array([0, 1]), np.array([2])), "B": (np.array([5]), np.array([]))})
    z = (expression - expression.mean(0)) / np.where(expression.std(0) > 0, expression.std(0), 1)
    assert np.allclose(tf["A"], z[:, [0, 1]].mean(1) - z[:, 2]) and np.allclose(tf["B"], 0)
    programmes = pd.DataFrame({"state1": (np.arange(20) < 8).astype(float), "A": tf["A"]})
    activity[:, 3] = programmes["state1"] * 2 + rng.normal(scale=0.1, size=20)   # a feature tracking state1
    table = best_feature_match(activity, programmes).set_index("programme")
    assert table.loc["state1", "best_feature"] == 3
    for name in ("state1", "A"):
        r = [pearsonr(activity[:, f], programmes[name]).statistic for f in range(10)]
        assert table.loc[name, "r"] == pytest.approx(np.nanmax(r))
