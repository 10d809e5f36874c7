"""Perturbation-first evaluation and confounds against independent references (scipy, sklearn) and known truth."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from analysis.scoring import confounds
from analysis.config import SimulationConfig
from analysis.io.cells import from_anndata
from analysis.scoring.edges import EdgeScores, expression_matrix
from analysis.scoring.perturbation import differential_expression, gene_level_scores, perturbation_auroc
from analysis.scoring.registry import StatsRegistry
from analysis.sim.simulate import constructed_edges, simulate_screen
from analysis.scoring.stats import benjamini_hochberg


@pytest.fixture(scope="module")
def screen():
    cfg = SimulationConfig(n_cells=900, n_perturbed=6, seed=5)
    adata, net = simulate_screen(cfg)
    cells = from_anndata(adata, perturbation_col="perturbation", cell_state_col="cell_state")
    universe = pd.DataFrame({"gene_id": list(net.gene_ids), "symbol": list(net.symbols)})
    return cells, net, universe


@pytest.mark.parametrize("test", ["welch", "mannwhitney"])
def test_de_matches_scipy(screen, test):
    cells, _, universe = screen
    de = differential_expression(cells, universe, test=test, lfc_threshold=0.0)
    x = expression_matrix(cells, universe["gene_id"].to_numpy())
    labels = cells.obs["perturbation"].astype(str).to_numpy()
    pert = de.groups["perturbation"].iloc[0]
    a, b = x[labels == pert], x[labels == "control"]
    expected = (stats.ttest_ind(a, b, equal_var=False).pvalue if test == "welch"
                else stats.mannwhitneyu(a, b, axis=0).pvalue)
    expected = np.where(np.isfinite(expected), expected, 1.0)
    got = de.table[de.table["perturbation"] == pert]
    assert np.allclose(got["p"], expected, rtol=1e-6, atol=1e-12)
    assert np.allclose(got["q"], benjamini_hochberg(expected))
    assert np.allclose(got["lfc"], np.log2((np.expm1(a.mean(0)) + 1e-9) / (np.expm1(b.mean(0)) + 1e-9)))  # Scanpy's


def test_known_targets_recovered(screen):
    cells, net, universe = screen
    de = differential_expression(cells, universe, lfc_threshold=0.25)
    idx = {s: i for i, s in enumerate(net.symbols)}
    hits, total = 0, 0
    for pert, tab in de.table.groupby("perturbation"):
        true = set(np.array(net.symbols)[np.nonzero(net.weights[idx[pert]])[0]])
        called = set(tab.loc[tab["is_de"], "symbol"])
        hits += len(true & called)
        total += len(called)
        assert not tab.loc[tab["is_self"], "is_de"].any()
    assert total > 0 and hits / total > 0.5  # most called DE genes are true direct targets


def test_perturbation_auroc_matches_sklearn(screen, rng):
    cells, net, universe = screen
    de = differential_expression(cells, universe, lfc_threshold=0.25)
    g = len(universe)
    scores = rng.random((2, g, g))
    edges = EdgeScores(scores, pd.DataFrame({"edge_type": ["a", "b"], "layer": -1, "head": -1}),
                       np.ones((g, g), bool), universe, {})
    res = perturbation_auroc(edges, de)
    assert res["perturbation"].nunique() >= 3
    idx = {s: i for i, s in enumerate(universe["symbol"])}
    for pert, grp in res.groupby("perturbation"):
        tab = de.table[(de.table["perturbation"] == pert) & ~de.table["is_self"]]
        cols = tab["symbol"].map(idx).to_numpy()
        for s, et in enumerate(["a", "b"]):
            expected = roc_auc_score(tab["is_de"], scores[s, idx[pert], cols])
            assert grp.set_index("edge_type").loc[et, "auroc"] == pytest.approx(expected)


def test_curveball_preserves_degrees_and_mask(rng):
    allowed = rng.random((12, 40)) < 0.8
    m = (rng.random((12, 40)) < 0.2) & allowed
    out = confounds.curveball(m, allowed, n_trades=500, rng=rng)
    assert np.array_equal(out.sum(1), m.sum(1)) and np.array_equal(out.sum(0), m.sum(0))
    assert not (out & ~allowed).any() and not np.array_equal(out, m)


def test_a_single_tf_is_its_own_degree_null(rng):
    """One TF row: no arrangement keeps its row and column sums but itself, so the null equals the observation."""
    labels = rng.random((1, 30)) < 0.3
    allowed = np.ones((1, 30), dtype=bool)
    assert np.array_equal(confounds.curveball(labels, allowed, n_trades=50, rng=rng), labels)
    scores = rng.random((1, 1, 30))
    (row,) = confounds.degree_null(scores, labels, allowed, n_null=9)
    assert row["degree_null_mean"] == row["auroc"] and row["excess"] == 0.0


def _observations(screen, seed=0):
    cells, net, universe = screen
    de = differential_expression(cells, universe, lfc_threshold=0.25)
    base = gene_level_scores(cells, universe)
    features = pd.DataFrame({"symbol": universe["symbol"], "mean": base.scores[0, 0], "variance": base.scores[1, 0],
                             "detection": base.scores[2, 0]}).set_index("symbol")
    planted = constructed_edges(net, list(universe["symbol"]), base.scores[1, 0], seed=seed)
    idx = {s: i for i, s in enumerate(universe["symbol"])}
    cols = {}
    for name, mat in planted.items():
        t = de.table
        cols[name] = pd.DataFrame({"perturbation": t["perturbation"], "symbol": t["symbol"],
                                   "score": mat[t["perturbation"].map(idx), t["symbol"].map(idx)]})
    return confounds.observation_table(de.table, features, cols)


def test_incremental_value_detects_planted_signal_only(screen):
    obs = _observations(screen)
    inc = confounds.incremental_value(obs, ["oracle", "gene_only"], models=("logistic",), splits=("perturbation",),
                                      n_boot=100, seed=0)
    auroc = inc[inc["metric"] == "auroc"].set_index("feature_set")
    assert auroc.loc["gene+oracle", "delta_ci_low"] > 0 and auroc.loc["gene+oracle", "p_delta"] < 0.05
    assert auroc.loc["gene+gene_only", "delta_ci_low"] <= 0 <= auroc.loc["gene+gene_only", "delta_ci_high"]


def test_propensity_matching_improves_balance(screen):
    obs = _observations(screen)
    res = confounds.propensity_match(obs, seed=0)
    assert res.params["n_pairs"] > 5
    assert (res.balance["smd_after"].abs() < res.balance["smd_before"].abs()).all()


def _sklearn_out_of_fold(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(labels, perturbations, out-of-fold predictions of gene-only and gene + oracle) recomputed with scikit-learn's
    GroupKFold by perturbation and cross_val_predict, the independent reference for incremental value."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    y, groups = frame["label"].to_numpy().astype(int), frame["perturbation"].to_numpy()
    cv = GroupKFold(n_splits=min(5, len(set(groups))))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1e4, max_iter=2000))
    pred = {name: cross_val_predict(model, frame[cols].to_numpy(float), y, groups=groups, cv=cv,
                                    method="predict_proba")[:, 1]
            for name, cols in {"gene": ["mean", "variance", "detection"],
                               "gene+oracle": ["mean", "variance", "detection", "oracle"]}.items()}
    return y, groups, pred


def test_matched_incremental_value_against_sklearn(screen):
    """Gene + edge vs gene on the propensity-matched set (paper SN14.8): out-of-fold AUROC / AUPRC, their difference
    and its perturbation-bootstrap CI, recomputed with scikit-learn's cross_val_predict and metrics."""
    from sklearn.metrics import average_precision_score
    match = confounds.propensity_match(_observations(screen), seed=0)
    m = match.matched
    assert (m.groupby("perturbation")["label"].mean() == 0.5).all()   # 1:1 pairs within each perturbation
    inc = confounds.incremental_value(m, ["oracle"], models=("logistic",), splits=("perturbation",), n_boot=40,
                                      seed=0).set_index(["feature_set", "metric"])
    y, groups, pred = _sklearn_out_of_fold(m)
    for metric, fn in (("auroc", roc_auc_score), ("auprc", average_precision_score)):
        assert np.isclose(inc.loc[("gene", metric), "value"], fn(y, pred["gene"]))
        delta = fn(y, pred["gene+oracle"]) - fn(y, pred["gene"])
        assert np.isclose(inc.loc[("gene+oracle", metric), "delta"], delta)
        uniq = np.unique(groups)
        rng = np.random.default_rng(0)
        diffs = []
        for _ in range(40):
            rows = np.concatenate([np.nonzero(groups == uniq[g])[0] for g in rng.integers(0, uniq.size, uniq.size)])
            diffs.append(fn(y[rows], pred["gene+oracle"][rows]) - fn(y[rows], pred["gene"][rows]))
        assert np.isclose(inc.loc[("gene+oracle", metric), "delta_ci_low"], np.percentile(diffs, 2.5))
        assert np.isclose(inc.loc[("gene+oracle", metric), "delta_ci_high"], np.percentile(diffs, 97.5))
    assert inc.loc[("gene+oracle", "auroc"), "delta_ci_low"] > 0      # the planted pairwise signal survives matching


def test_residualisation_removes_gene_level_signal(rng):
    cov = rng.normal(size=(2000, 3))
    labels = (cov[:, 0] + rng.normal(size=2000)) > 1.0
    confounded = cov[:, 0] + rng.normal(scale=0.1, size=2000)  # carries only covariate information
    res = confounds.residualise(confounded, cov, labels, model="ols")
    assert res["auroc"] > 0.7 and abs(res["auroc_residual"] - 0.5) < 0.06 and res["retained"] < 0.2


def test_registry_bh_families():
    reg = StatsRegistry()
    for i, p in enumerate([0.001, 0.02, 0.04, 0.3]):
        reg.register("a" if i < 2 else "b", f"h{i}", "t", p, effect=0.1, effect_name="d", n=10, confirmatory=i != 3)
    reg.register("c", "descriptive", "bootstrap", np.nan, effect=0.2, effect_name="d", n=10, confirmatory=False)
    t = reg.table()
    assert np.allclose(t["q"].iloc[:3], benjamini_hochberg(np.array([0.001, 0.02, 0.04])))
    assert np.allclose(t["q_all"].iloc[:4], benjamini_hochberg(np.array([0.001, 0.02, 0.04, 0.3])))
    assert t["q_primary_per_analysis"].notna().sum() == 2 and np.isnan(t["q"].iloc[4])
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a", "h0", "t", 0.5, effect=0, effect_name="d", n=1)


def test_weighted_bootstrap_metrics_equal_sklearn_on_the_resampled_set(rng):
    """A perturbation bootstrap scored as weights (a group drawn k times counts k times) equals scikit-learn's AUROC
    and average precision on the concatenated resample, ties included."""
    from sklearn.metrics import average_precision_score
    n, n_groups = 800, 25
    y = (rng.random(n) < 0.25).astype(int)
    p = np.round(rng.random(n) + 0.4 * y, 1)                 # coarse scores: many ties
    group = rng.integers(0, n_groups, n)
    ties = np.unique(p, return_inverse=True)[1]
    for _ in range(10):
        draw = rng.integers(0, n_groups, n_groups)
        idx = np.concatenate([np.nonzero(group == g)[0] for g in draw])
        got = confounds._metrics(y, ties, np.bincount(draw, minlength=n_groups).astype(float)[group], np.array([0.3]))
        assert got["auroc"] == pytest.approx(roc_auc_score(y[idx], p[idx]), abs=1e-12)
        assert got["auprc"] == pytest.approx(average_precision_score(y[idx], p[idx]), abs=1e-12)


def test_unobserved_pairs_score_zero_in_the_observation_table():
    """An attention score of NaN (pair never co-observed) enters the confound models as 0, as perturbation_auroc
    scores it; before, LogisticRegression refused the table (found on a 512-token model over an 8,000-gene screen)."""
    de = pd.DataFrame({"perturbation": ["P"] * 4, "symbol": list("ABCD"), "is_de": [True, False, True, False],
                       "is_self": False})
    features = pd.DataFrame({"mean": [1.0, 2, 3, 4], "variance": 1.0, "detection": 0.5}, index=list("ABCD"))
    edge = pd.DataFrame({"perturbation": "P", "symbol": list("ABCD"), "score": [0.3, np.nan, np.nan, 0.1]})
    obs = confounds.observation_table(de, features, {"attention": edge})
    assert obs["attention"].tolist() == [0.3, 0.0, 0.0, 0.1]


def test_per_tf_excess_over_the_degree_null_and_within_tf_precision_by_brute_force(rng):
    """Registry 16's per-TF rows against an independent computation: each TF's AUROC and its mean over the same
    curveball draws with scikit-learn's roc_auc_score, precision@k by sorting each TF's genes by score."""
    from sklearn.metrics import roc_auc_score

    allowed = rng.random((6, 50)) < 0.9
    labels = (rng.random((6, 50)) < 0.2) & allowed
    labels[5] = False                                                    # a TF with no target: left out
    scores = rng.random((6, 50)) + labels * 0.5
    draws = [confounds.curveball(labels, allowed, n_trades=200, rng=rng) for _ in range(7)]
    table = confounds.per_tf_degree_excess(scores, labels, allowed, draws).set_index("tf_row")
    assert list(table.index) == [0, 1, 2, 3, 4]
    for t in table.index:
        cols = allowed[t]
        y, s = labels[t, cols], scores[t, cols]
        auroc = roc_auc_score(y, s)
        null = np.mean([roc_auc_score(d[t, cols], s) for d in draws])
        k = int(y.sum())
        precision = y[np.argsort(-s)[:k]].mean()
        row = table.loc[t]
        assert np.isclose(row["auroc"], auroc) and np.isclose(row["degree_null_mean"], null)
        assert np.isclose(row["excess"], auroc - null) and row["k"] == k
        assert np.isclose(row["precision_at_k"], precision) and np.isclose(row["chance_precision"], k / y.size)
    pooled = confounds.degree_null(scores[None], labels, allowed, n_null=7, seed=3, per_tf=True)[0]
    assert len(pooled["per_tf"]) == 5
    assert pooled["auroc"] == confounds.degree_null(scores[None], labels, allowed, n_null=7, seed=3)[0]["auroc"]


def test_direct_target_auroc_matches_sklearn_on_each_perturbed_tfs_reference_targets(screen, rng):
    """Registry 35's direct-target check: per perturbed TF, its reference targets among the genes DE tested against
    the rest, scored from the TF's row; a perturbation with no reference target is left out."""
    from analysis.scoring.perturbation import direct_target_auroc

    cells, net, universe = screen
    de = differential_expression(cells, universe, lfc_threshold=0.25)
    perturbed = sorted(set(de.table["perturbation"]))
    symbols = list(universe["symbol"])
    others = [s for s in symbols if s not in perturbed]
    pairs = {(perturbed[0], g) for g in others[:5]} | {(perturbed[1], g) for g in others[3:12]}
    g = len(universe)
    scores = rng.random((1, g, g))
    edges = EdgeScores(scores, pd.DataFrame({"edge_type": ["a"], "layer": -1, "head": -1}), np.ones((g, g), bool),
                       universe, {})
    res = direct_target_auroc(edges, de.table, pairs).set_index("perturbation")
    assert set(res.index) == {perturbed[0], perturbed[1]}
    idx = {s: i for i, s in enumerate(symbols)}
    for tf in res.index:
        tab = de.table[(de.table["perturbation"] == tf) & ~de.table["is_self"]]
        labels = [(tf, s) in pairs for s in tab["symbol"]]
        expected = roc_auc_score(labels, scores[0, idx[tf], tab["symbol"].map(idx).to_numpy()])
        assert res.loc[tf, "auroc"] == pytest.approx(expected) and res.loc[tf, "n_pos"] == sum(labels)


def test_incremental_value_power_and_tf_subgroups_against_sklearn(screen):
    """Registry 26's power analysis and TF-stratified rows: the smallest detectable gain is 2.49 bootstrap standard
    errors of delta (one-sided alpha 0.05, 80% power), and the TF / non-TF AUROCs are scikit-learn's on the same
    out-of-fold predictions within each subgroup, with the same perturbation bootstrap."""
    obs = _observations(screen)
    perts = sorted(set(obs["perturbation"]))
    tfs = frozenset(perts[:2])
    inc = confounds.incremental_value(obs, ["oracle"], models=("logistic",), splits=("perturbation",), n_boot=40,
                                      seed=0, tf_perturbations=tfs).set_index(["feature_set", "metric"])
    y, groups, pred = _sklearn_out_of_fold(obs)
    is_tf = np.isin(groups, list(tfs))
    for metric, mask in (("auroc_tf", is_tf), ("auroc_non_tf", ~is_tf)):
        assert np.isclose(inc.loc[("gene", metric), "value"], roc_auc_score(y[mask], pred["gene"][mask]))
        assert inc.loc[("gene", metric), "n_obs"] == mask.sum()
    uniq = np.unique(groups)
    rng = np.random.default_rng(0)
    diffs = {"auroc": [], "auroc_tf": []}
    for _ in range(40):
        rows = np.concatenate([np.nonzero(groups == uniq[g])[0] for g in rng.integers(0, uniq.size, uniq.size)])
        diffs["auroc"].append(roc_auc_score(y[rows], pred["gene+oracle"][rows]) - roc_auc_score(y[rows],
                                                                                               pred["gene"][rows]))
        sub = rows[is_tf[rows]]
        if len(set(y[sub])) == 2:
            diffs["auroc_tf"].append(roc_auc_score(y[sub], pred["gene+oracle"][sub])
                                     - roc_auc_score(y[sub], pred["gene"][sub]))
    for metric, values in diffs.items():
        se = np.std(values, ddof=1)
        assert np.isclose(inc.loc[("gene+oracle", metric), "delta_se"], se)
        assert np.isclose(inc.loc[("gene+oracle", metric), "min_detectable_delta"], 2.4864748 * se)


def test_residual_stability_is_the_spread_over_cross_fitting_seeds(rng):
    """Registry 15's 10-seed stability: the SD of the residual AUROC over fold draws, each draw recomputed here with
    scikit-learn's KFold, LinearRegression and roc_auc_score."""
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import KFold
    cov = rng.normal(size=(600, 3))
    labels = (cov[:, 0] + rng.normal(size=600)) > 1.0
    scores = cov[:, 0] + rng.normal(scale=0.5, size=600) + 0.3 * labels
    got = confounds.residual_stability(scores, cov, labels, model="ols", seeds=list(range(4)))
    aurocs = []
    for seed in range(4):
        resid = np.empty(600)
        for train, test in KFold(5, shuffle=True, random_state=seed).split(scores):
            resid[test] = scores[test] - LinearRegression().fit(cov[train], scores[train]).predict(cov[test])
        aurocs.append(roc_auc_score(labels, resid))
    assert got["n_seeds"] == 4 and got["auroc_residual_sd"] == pytest.approx(np.std(aurocs, ddof=1))
    assert got["auroc_residual_sd"] > 0


def test_a_de_result_recalled_at_another_threshold_equals_de_run_at_it(screen):
    """The sensitivity grid runs DE once per controls and universe and re-calls targets per |log2FC| threshold."""
    from analysis.scoring.perturbation import at_threshold
    cells, _, universe = screen
    low = differential_expression(cells, universe, lfc_threshold=0.1)
    high = differential_expression(cells, universe, lfc_threshold=1.5)
    again = at_threshold(low, 1.5)
    pd.testing.assert_frame_equal(again.table, high.table)
    pd.testing.assert_frame_equal(again.groups, high.groups)
    assert again.params == high.params and again.table["is_de"].sum() < low.table["is_de"].sum()
