"""Layer selection (SN14.1; analysis.scoring.layer_selection): every layer vs correlation and nested CV against a
brute-force loop with scipy, and nested CV never choosing a layer that only looks best on the held-out fold."""
import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from analysis.scoring.layer_selection import fold_of, layer_matrix, layer_vs_correlation, nested_selection


def _per_pert(att: np.ndarray, corr: np.ndarray, names) -> pd.DataFrame:
    rows = [{"perturbation": p, "edge_type": "attention_layer_mean", "layer": l, "head": -1, "auroc": att[i, l]}
            for i, p in enumerate(names) for l in range(att.shape[1])]
    rows += [{"perturbation": p, "edge_type": "spearman", "layer": -1, "head": -1, "auroc": corr[i]}
             for i, p in enumerate(names)]
    return pd.DataFrame(rows)


def test_layers_and_nested_cv_against_a_brute_force_loop():
    rng = np.random.default_rng(0)
    names = [f"P{i:02d}" for i in range(23)]
    att_values, corr_values = rng.uniform(0.3, 0.9, (23, 4)), rng.uniform(0.3, 0.9, 23)
    att, corr = layer_matrix(_per_pert(att_values, corr_values, names), "spearman")
    assert list(att.index) == names and att.shape == (23, 4)
    per_layer = layer_vs_correlation(att, corr)
    for l in range(4):
        assert np.isclose(per_layer.loc[l, "p"], wilcoxon(att_values[:, l] - corr_values).pvalue)
    table, summary = nested_selection(att, corr, seed=3)
    folds = fold_of(names, 5, 3)
    assert sorted(set(folds.values())) == [0, 1, 2, 3, 4] and set(table["perturbation"]) == set(names)
    held_out_advantage, fold_ps = [], []
    for k in range(5):
        train = [i for i, p in enumerate(names) if folds[p] != k]
        test = [i for i, p in enumerate(names) if folds[p] == k]
        best = int(np.argmax(att_values[train].mean(axis=0)))
        assert (table.loc[table["fold"] == k, "selected_layer"] == best).all()
        diff = att_values[test, best] - corr_values[test]
        held_out_advantage += list(diff)
        fold_ps.append(wilcoxon(diff).pvalue)
    assert np.isclose(summary["advantage"], np.mean(held_out_advantage))
    assert np.isclose(summary["p_pooled"], wilcoxon(held_out_advantage).pvalue)
    assert np.isclose(summary["p_bonferroni"], min(1.0, 5 * min(fold_ps)))


def test_a_layer_best_only_on_the_held_out_fold_is_not_chosen_for_it():
    """Layer 1 scores 1.0 on fold 0's perturbations and 0.55 elsewhere; layer 0 scores 0.6 everywhere. Over all the
    data layer 1 looks best (0.2 x 1.0 + 0.8 x 0.55 = 0.64 > 0.6), and on the folds whose training holds fold 0 it is
    (0.66); for fold 0 itself, whose training never sees those 1.0s, layer 0 must be chosen."""
    names = [f"P{i:02d}" for i in range(20)]
    folds = fold_of(names, 5, 0)
    att_values = np.array([[0.6, 1.0 if folds[p] == 0 else 0.55] for p in names])
    corr_values = np.full(20, 0.5)
    att, corr = layer_matrix(_per_pert(att_values, corr_values, names), "spearman")
    assert att[1].mean() > att[0].mean()                     # selecting on all data would pick layer 1
    table, summary = nested_selection(att, corr, seed=0)
    chosen = table.groupby("fold")["selected_layer"].first()
    assert chosen[0] == 0 and (chosen.drop(0) == 1).all()
    assert np.isclose(summary["stability"], 0.8) and summary["modal_layer"] == 1


def test_bonferroni_over_the_layers_searched_and_the_held_out_ci_against_a_brute_force_loop():
    """Registry 30: the un-nested search's best layer, its Wilcoxon p times the layers searched (scipy), and the
    percentile CI of the pooled held-out advantage under 1,000 perturbation draws (a loop over the draws)."""
    from analysis.scoring.layer_selection import bonferroni_layer_search, held_out_ci

    rng = np.random.default_rng(4)
    names = [f"P{i:02d}" for i in range(30)]
    att_values, corr_values = rng.uniform(0.4, 0.8, (30, 6)), rng.uniform(0.4, 0.8, 30)
    att_values[:, 4] += 0.05
    att, corr = layer_matrix(_per_pert(att_values, corr_values, names), "spearman")
    search = bonferroni_layer_search(att, corr)
    best = int(np.argmax(att_values.mean(axis=0)))
    assert search["layer"] == best and search["n_layers"] == 6
    assert np.isclose(search["p_bonferroni"], min(1.0, 6 * wilcoxon(att_values[:, best] - corr_values).pvalue))
    table, _ = nested_selection(att, corr, seed=1)
    diff = (table["attention_auroc"] - table["correlation_auroc"]).to_numpy()
    draws = np.random.default_rng(7)
    means = [diff[draws.integers(0, diff.size, diff.size)].mean() for _ in range(1000)]
    assert np.allclose(held_out_ci(table, seed=7), (np.percentile(means, 2.5), np.percentile(means, 97.5)))
