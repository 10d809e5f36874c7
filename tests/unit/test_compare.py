"""Runs side by side (analysis.scoring.compare): recovery re-scored on the shared genes against scikit-learn's AUROC
over a brute-force pair list, relative depth, and the per-run confound summary read from hand-built tables."""
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from analysis.io.references import ReferenceNetwork
from analysis.scoring.compare import confound_summary, layer_recovery, shared_symbols
from analysis.scoring.edges import EdgeScores


def _edges(symbols, n_layers, rng):
    g = len(symbols)
    scores = rng.random((n_layers + 1, g, g))
    sources = pd.DataFrame({"edge_type": ["attention_layer_mean"] * n_layers + ["spearman"],
                            "layer": list(range(n_layers)) + [-1], "head": -1})
    observed = rng.random((g, g)) < 0.85
    panel = pd.DataFrame({"symbol": symbols, "gene_id": symbols, "gene_index": np.arange(g)})
    return EdgeScores(scores, sources, observed, panel, {})


def test_shared_gene_recovery_against_sklearn():
    rng = np.random.default_rng(4)
    genes = [f"G{i}" for i in range(30)]
    a = _edges(genes[:24], 4, rng)                        # a 4-layer run over genes 0-23
    b = _edges(genes[6:] + ["X1", "X2"], 18, rng)         # an 18-layer run over genes 6-29 and two of its own
    shared = shared_symbols([a.panel, b.panel])
    assert shared == genes[6:24]
    tfs = ["G6", "G8", "G10", "G12"]
    pairs = [(tf, g) for tf in tfs for g in rng.choice(genes, 6, replace=False) if g != tf]
    ref = ReferenceNetwork("ref", pd.DataFrame({"reference": "ref", "tf": [p[0] for p in pairs],
                                                "target": [p[1] for p in pairs], "mode": "", "confidence": ""}), {})
    for edges, n_layers in ((a, 4), (b, 18)):
        got = layer_recovery(edges, ref, shared)
        index = {s: i for i, s in enumerate(edges.panel["symbol"])}
        positives = set(pairs)
        for row in got.itertuples():
            y, s = [], []
            for tf in tfs:
                for g in shared:
                    i, j = index[tf], index[g]
                    if g != tf and edges.observed[i, j]:
                        y.append((tf, g) in positives)
                        s.append(edges.scores[row.Index, i, j])
            assert np.isclose(row.auroc, roc_auc_score(y, s)) and row.n_pos == sum(y)
        depth = got.loc[got["layer"] >= 0, "relative_depth"].to_numpy()
        assert np.allclose(depth, np.arange(n_layers) / (n_layers - 1))


def test_confound_summary_reads_each_table():
    inc = pd.DataFrame([{"split": "perturbation", "model": "logistic", "feature_set": "gene+attention",
                         "metric": "auroc", "delta": -0.01, "delta_ci_low": -0.02, "delta_ci_high": 0.005},
                        {"split": "gene", "model": "logistic", "feature_set": "gene+attention", "metric": "auroc",
                         "delta": 0.5, "delta_ci_low": 0.4, "delta_ci_high": 0.6}])
    res = pd.DataFrame({"edge": ["attention", "attention", "correlation"], "model": ["gbdt", "ols", "ols"],
                        "retained": [0.9, 0.24, 0.91]})
    abl = pd.DataFrame({"family": ["top_k", "top_k", "random_k"], "readout": "mlm_loss", "k": [5, 50, 50],
                        "delta": [0.01, 0.03, 0.2], "p": [0.4, 0.2, 0.001]})
    out = confound_summary({"incremental_value": inc, "residualisation": res, "ablation_results": abl},
                           readout_layer=3, primary_n_strata=5)
    assert out["incremental_delta"] == -0.01 and out["incremental_ci"] == "[-0.020, 0.005]"
    assert out["retained_attention"] == 0.24 and out["retained_correlation"] == 0.91
    assert (out["ablation_top_k"], out["ablation_delta"], out["ablation_p"]) == (50, 0.03, 0.2)
    assert np.isnan(out["matched_delta"]) and np.isnan(out["cssi_gain"]) and np.isnan(out["degree_excess"])


def test_feature_summary_joins_the_sae_tables_per_layer():
    from analysis.scoring.compare import feature_summary

    layers = pd.DataFrame({"layer": [0, 2], "n_features": 64, "fraction_variance_explained": [0.9, 0.8],
                           "behaviour_delta": [0.1, 0.3], "n_dead": [1, 2], "n_dense": [0, 3], "n_svd_visible": [4, 5],
                           "n_modules": [2, 1], "causal_specificity": [2.5, np.nan]})
    programmes = pd.DataFrame({"layer": [0, 0, 0, 2], "kind": ["cell_state", "cell_state", "tf_activity", "cell_state"],
                               "r": [0.4, 0.6, 0.5, 0.3], "null_r": [np.nan, np.nan, np.nan, 0.1]})
    regulatory = pd.DataFrame({"layer": [0, 0, 2], "tf": ["A", "B", "A"], "passes": [True, False, True],
                               "rotated_passes": [False, False, True]})
    out = feature_summary(layers, programmes, regulatory, n_layers=3).set_index("layer")
    assert out.loc[2, "relative_depth"] == 1.0 and out.loc[0, "fve"] == 0.9 and out.loc[0, "causal_specificity"] == 2.5
    assert out.loc[0, "best_state_r"] == 0.6 and out.loc[0, "best_tf_r"] == 0.5 and np.isnan(out.loc[2, "best_tf_r"])
    assert out.loc[2, "best_state_null_r"] == 0.1
    assert (out.loc[0, "regulatory_passing"], out.loc[0, "regulatory_tfs"], out.loc[0, "regulatory_null"]) == (1, 2, 0)
    assert out.loc[2, "regulatory_null"] == 1
    bare = feature_summary(layers, None, None, n_layers=3)
    assert bare["regulatory_tfs"].isna().all() and bare["best_state_r"].isna().all()
