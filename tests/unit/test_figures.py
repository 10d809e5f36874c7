"""The figure functions are pure: hand-built tables in, the traces and values they must draw out (no server)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.figures import (biology_profiles, ci_forest, compare_layer_profiles, composition_plot, convergence_plot,
                         dose_response, replication_profile, residualisation_bars, scaling_curves)


def test_scaling_curves_draw_seeds_means_and_the_bootstrap_band():
    rows = [(seed, m, m * 12, etype, layer, metric, 0.5 + 0.01 * m + 0.001 * seed)
            for seed in range(3) for m in (4, 40) for etype, layer in (("attention_layer_mean", 1), ("spearman", -1))
            for metric in ("auroc", "f1")]
    curve = pd.DataFrame(rows, columns=["seed", "n_units", "n_cells", "edge_type", "layer", "metric", "value"])
    boot = pd.DataFrame({"n_units": [4, 40], "n_cells": [48, 480], "edge_type": "spearman", "layer": -1,
                         "ci_low": [0.5, 0.6], "ci_high": [0.55, 0.65]})
    fig = scaling_curves(curve, boot, readout_layer=1, reference="R")
    means = [t for t in fig.data if t.name in ("L1 head mean", "Spearman")]
    assert len(means) == 4                                   # two sites x two metric panels
    assert np.allclose(means[0].y, [0.5 + 0.04 + 0.001, 0.5 + 0.4 + 0.001])   # mean over seeds 0..2
    band = [t for t in fig.data if t.name == "Spearman: bootstrap 95% CI"]
    assert len(band) == 1 and list(band[0].y) == [0.55, 0.65, 0.6, 0.5]
    assert sum(t.name is None for t in fig.data) == 2 * 2 * 3    # one thin line per seed, site and metric


def test_composition_biology_forest_replication_and_convergence_figures():
    comp = pd.DataFrame({"condition": ["single_state"] * 2 + ["heterogeneity"] * 2, "seed": 0,
                         "n_cells": [10, 20, 30, 30], "n_states": [1, 1, 1, 2], "auroc": [0.5, 0.6, 0.55, 0.65],
                         "f1": 0.1, "states_from": "cell-state column"})
    fig = composition_plot(comp, reference="R")
    assert len(fig.data) == 4 and "cell-state column" in fig.layout.title.text
    profiles = pd.DataFrame({"reference": ["P"] * 3 + ["T"] * 3, "kind": ["pairs"] * 3 + ["regulatory"] * 3,
                             "edge_type": ["attention_layer_mean", "attention_layer_mean", "spearman"] * 2,
                             "layer": [0, 1, -1] * 2, "auroc": [0.6, 0.55, 0.58, 0.5, 0.7, 0.6]})
    fig = biology_profiles(profiles)
    assert [t.line.dash for t in fig.data] == ["solid", "dot", "dash", "dot"] and list(fig.data[2].y) == [0.5, 0.7]
    assert [t.name for t in fig.data if t.line.dash == "dot"] == ["Spearman baseline, P: 0.580",
                                                                  "Spearman baseline, T: 0.600"]   # each labelled
    forest = pd.DataFrame({"tf": ["A", "B"], "auroc": [0.7, 0.52], "ci_low": [0.6, 0.45], "ci_high": [0.8, 0.6]})
    fig = ci_forest(forest, label="tf", value="auroc", title="t", x_title="x", null=0.5)
    assert list(fig.data[0].marker.color) == ["#1f3b73", "#9aa9c7"]       # only A's CI excludes 0.5
    assert np.allclose(fig.data[0].error_x.array, [0.1, 0.08])
    rep = pd.DataFrame({"run": ["a", "a"], "layer": [0, 1], "relative_depth": [0.0, 1.0], "advantage": [0.1, -0.1],
                        "ci_low": [0.0, -0.2], "ci_high": [0.2, 0.0], "n": 10})
    fig = replication_profile(rep)
    assert len(fig.data) == 1 and np.allclose(fig.data[0].error_y.arrayminus, [0.1, 0.1])
    conv = pd.DataFrame({"run": "a", "kind": ["attention", "attention", "correlation"], "n_cells": [10, 100, 10],
                         "auroc_mean": [0.5, 0.52, 0.6], "ci_low": [0.45, 0.5, 0.55], "ci_high": [0.55, 0.54, 0.65]})
    fig = convergence_plot(conv)
    assert [t.name for t in fig.data] == ["a: attention", "a: correlation"] and fig.layout.xaxis.type == "log"


def test_the_volcano_draws_underflow_on_a_ceiling_and_leaves_untested_rows_out():
    from app.figures import effect_vs_q
    frame = pd.DataFrame({"analysis": ["a", "a", "b", "b"], "hypothesis": ["h0", "h1", "h2", "h3"],
                          "effect": [0.1, 0.2, 0.3, 0.4], "q": [0.0, 1e-5, np.nan, np.nan],
                          "q_all": [0.0, 1e-5, 0.5, np.nan], "confirmatory": [True, True, False, False]})
    fig = effect_vs_q(frame)
    drawn = {h[0]: (y, s, h[1]) for trace in fig.data for y, s, h in zip(trace.y, trace.marker.symbol,
                                                                           trace.customdata)}
    assert set(drawn) == {"h0", "h1", "h2"}                                   # h3 has no q in any family
    assert drawn["h1"][0] == pytest.approx(5.0) and drawn["h2"][0] == pytest.approx(np.log10(2))
    assert drawn["h0"][0] == pytest.approx(5.0 * 1.1 + 1.0)                  # the ceiling, not -log10(1e-300)
    assert drawn["h0"][1] == "triangle-up" and drawn["h0"][2] == "q < 1e-300 (underflow)"
    assert drawn["h2"][1] == "circle-open" and drawn["h1"][2] == "q = 1e-05"


def test_the_layer_profile_exports_the_series_it_draws():
    from app.figures import layer_profile, layer_profile_series
    frame = pd.DataFrame({"edge_type": ["attention"] * 4 + ["attention_layer_mean"] * 2 + ["spearman"],
                          "layer": [0, 0, 1, 1, 0, 1, -1], "value": [0.5, 0.6, 0.7, 0.4, 0.55, 0.56, 0.61]})
    series = layer_profile_series(frame, metric="auroc")
    assert series.to_dict("list") == {"layer": [0, 1], "best_head": [0.6, 0.7], "median_head": [0.55, 0.55],
                                      "layer_mean": [0.55, 0.56], "spearman": [0.61, 0.61], "chance": [0.5, 0.5]}
    fig = layer_profile(frame, metric="auroc", reference="R", direction="tf_to_target")
    assert [list(t.y) for t in fig.data] == [[0.6, 0.7], [0.55, 0.55], [0.55, 0.56]]
    assert len({t.line.dash for t in fig.data}) == 3                     # told apart without colour


def _sweep() -> pd.DataFrame:
    rows = [("zero_head@L0[0]", "top_k", 1, -1, 0.3, False), ("zero_head@L0[1]", "random_k", 1, 0, 0.1, False),
            ("zero_head@L1[2]", "random_k", 1, 1, -0.2, False), ("zero_head@L0[3]", "bottom_k", 1, -1, 0.05, False),
            ("zero_head@L0[0,1]", "top_k", 2, -1, 0.5, False), ("zero_head@L0[2,3]", "random_k", 2, 0, 0.2, False),
            ("zero_head@L1[0,1]", "random_k", 2, 1, 0.4, False), ("zero_head@L1[1,2]", "bottom_k", 2, -1, 0.1, False),
            ("zero_head@L3[0]", "top_k", 5, -1, 0.0, True),
            ("uniform_head@L0[0]", "uniform_top_k", 1, -1, 0.7, False),
            ("zero_head@L1[0,1,2,3]", "whole_layer", 4, 1, 0.6, False),
            ("zero_head@L3[0,1,2,3]", "whole_layer", 4, 3, 0.0, True),
            ("zero_mlp@L0", "mlp_layer", 1, 0, 0.2, False), ("zero_mlp@L2+zero_mlp@L3", "mlp_block", 2, 2, 0.3, False)]
    frame = pd.DataFrame(rows, columns=["intervention", "family", "k", "draw", "delta", "structural"])
    return frame.assign(readout="reference_auroc", ci_low=frame["delta"] - 0.1, ci_high=frame["delta"] + 0.1)


def test_the_dose_response_shows_the_decisive_comparison_and_keeps_the_rest_on_demand():
    fig = dose_response(_sweep(), readout="reference_auroc")
    names = [t.name for t in fig.data]
    assert not any("uniform" in n for n in names)                      # controls only on demand
    band = next(t for t in fig.data if t.name.endswith("range of draws"))
    assert list(band.x) == [1, 2, 2, 1] and list(band.y) == [0.1, 0.4, 0.2, -0.2]       # max over k, then min back
    mean = next(t for t in fig.data if t.name.endswith("mean of draws"))
    assert list(mean.y) == pytest.approx([-0.05, 0.3])
    top = next(t for t in fig.data if t.name == "top-k heads (zero)")
    assert list(top.x) == [1, 2]                                       # the structural k = 5 is not on the line
    crossed = next(t for t in fig.data if t.name.startswith("structural null"))
    assert list(crossed.customdata) == ["zero_head@L3[0]"]
    assert list(fig.layout.xaxis.tickvals) == [1, 2, 5] and fig.layout.xaxis.type == "log"
    layers = next(t for t in fig.data if t.name == "whole layer / MLP (zero)")
    assert list(layers.y) == ["all heads of L1", "all heads of L3 (structural)", "MLP of L0", "MLPs of L2-L3"]
    assert len(set(layers.y)) == len(layers.y)                         # one labelled row each: nothing overprints
    assert list(layers.marker.symbol) == ["diamond", "x-thin-open", "diamond", "diamond"]   # structural crossed out
    styles = {(t.line.dash, t.marker.symbol) for t in fig.data if t.mode == "lines+markers"}
    assert len(styles) == sum(t.mode == "lines+markers" for t in fig.data)     # told apart without colour
    more = dose_response(_sweep(), readout="reference_auroc", families=("top_k", "uniform_top_k"))
    assert [t.name for t in more.data if "uniform" in t.name] == ["top-k heads (uniform)"]


def test_equal_baselines_of_two_runs_stay_readable_and_residualisation_rows_are_labelled_apart():
    frame = pd.DataFrame({"run": ["a", "a", "a", "b", "b", "b"], "relative_depth": [0, 1, 0, 0, 1, 0],
                          "layer": [0, 1, -1, 0, 1, -1], "auroc": [0.5, 0.6, 0.62, 0.55, 0.58, 0.62],
                          "kind": ["attention", "attention", "correlation"] * 2})
    fig = compare_layer_profiles(frame, value="auroc", title="t", y_title="y")
    baselines = [t.name for t in fig.data if t.name.endswith("0.620")]
    assert baselines == ["a: correlation 0.620", "b: correlation 0.620"]      # both named with their value
    res = pd.DataFrame({"edge": ["attention", "attention", "correlation", "correlation"],
                        "model": ["ols", "gbdt", "ols", "gbdt"], "reference": "R", "auroc": [0.6, 0.6, 0.45, 0.51],
                        "auroc_residual": [0.55, 0.6, 0.5, 0.6], "retained": [0.5, 1.0, float("nan"), 10.0]})
    fig = residualisation_bars(res)
    assert all(t.orientation == "h" for t in fig.data)                       # horizontal: labels never rotate
    assert list(fig.data[1].y) == ["attention (ols) vs R", "attention (gbdt) vs R", "correlation (ols) vs R",
                                   "correlation (gbdt) vs R"]
    assert list(fig.data[1].text) == ["50% kept", "100% kept", "raw AUROC at/below chance: no share to keep",
                                      "raw AUROC too close to chance to apportion"]      # 0.01 above: no "1000%"
