"""The plain-language verdicts (analysis.scoring.verdicts) and the head-ranking comparison behind one of them
(analysis.scoring.ablation.ranking_comparison), against hand computations on registries and sweeps built here: each
verdict's stance follows the registry's q in the family read, its sentence carries the run's numbers, and the
ranking comparison's empirical rank p counts the random draws by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.scoring.numbers import probability
from analysis.scoring.ablation import ranking_comparison
from analysis.scoring.registry import ablation_tests
from analysis.scoring.verdicts import AGAINST, FOR, OPEN, UNTESTABLE, bottom_line, verdicts


def _sweep() -> pd.DataFrame:
    rows = [("zero_head@L1[1,2]", "top_k", 2, -1, 0.3), ("zero_head@L0[0,3]", "random_k", 2, 0, 0.1),
            ("zero_head@L0[1,2]", "random_k", 2, 1, -0.4), ("zero_head@L1[0,3]", "random_k", 2, 2, 0.2),
            ("zero_head@L0[0,1]", "bottom_k", 2, -1, -0.5),
            ("zero_head@L0[0,1,2,3]", "top_k", 4, -1, 0.9), ("zero_head@L0[0,1,2,3]", "random_k", 4, 0, 0.9)]
    frame = pd.DataFrame(rows, columns=["intervention", "family", "k", "draw", "delta"])
    frame = frame.assign(readout="mlm_loss", value=0.0, baseline=0.0, ci_low=0.0, ci_high=0.0, p=0.5, n=10,
                         structural=False, q=0.5)
    structural = frame.iloc[[0]].assign(readout="perturbation_auroc", structural=True, delta=0.0)
    return pd.concat([frame, structural], ignore_index=True)


def test_ranking_comparison_counts_the_random_draws_by_hand():
    table = ranking_comparison(_sweep(), "mlm_loss")
    assert list(table["k"]) == [2]                       # k = 4 holds every head: the only draw is the top set
    row = table.iloc[0]
    assert row["top"] == 0.3 and row["bottom"] == -0.5 and row["n_random"] == 3
    assert row["random_mean"] == pytest.approx((0.1 - 0.4 + 0.2) / 3)
    assert row["random_abs_mean"] == pytest.approx(0.7 / 3) and row["random_abs_max"] == 0.4
    assert row["rank_p"] == pytest.approx((1 + 1) / (1 + 3)) and row["smallest_p"] == 0.25   # |-0.4| >= 0.3
    assert ranking_comparison(_sweep(), "perturbation_auroc").empty                       # structural nulls only
    tests = ablation_tests(_sweep()).table()
    mine = tests[tests["hypothesis"] == "top_k k=2 moves mlm_loss more than 3 random_k draws"]
    assert len(mine) == 1 and mine["p"].iloc[0] == 0.5 and not mine["confirmatory"].iloc[0]
    assert mine["effect"].iloc[0] == pytest.approx(0.3 - 0.7 / 3)


def _registry(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["analysis", "hypothesis", "test", "p", "effect", "n", "confirmatory",
                                        "q_confirmatory"])
    frame["test_id"] = frame["analysis"] + "::" + frame["hypothesis"]
    return frame


REF = "TRRUST"


def _full(degree_q=0.01, pert_q=0.5, baseline_q=0.01, gain_q=0.9, detectable=0.02):
    return _registry([
        ("degree_null", f"attention vs {REF}: excess over degree null", "curveball", 0.001, 0.04, 100, True, degree_q),
        ("degree_null", f"correlation vs {REF}: excess over degree null", "curveball", 0.2, 0.01, 100, True, 0.3),
        ("perturbation_first", "attention L3 AUROC > 0.5", "t-test", 0.2, 0.53, 40, True, pert_q),
        ("perturbation_first", "correlation AUROC > 0.5", "t-test", 0.01, 0.58, 40, True, 0.02),
        ("perturbation_first", "attention L3 vs correlation", "paired t", 0.01, -0.4, 40, True, 0.03),
        ("trivial_baselines", "baseline_variance vs attention L3", "paired", 0.001, 0.9, 40, True, baseline_q),
        ("trivial_baselines", "baseline_mean vs attention L3", "paired", 0.4, 0.1, 40, True, 0.5),
        ("incremental_value", "gene+attention > gene (perturbation split, logistic)", "bootstrap", 0.8, -0.004, 40,
         True, gain_q),
        ("incremental_value", "power: smallest gene+attention gain detectable (perturbation split, logistic)",
         "bootstrap SE", np.nan, detectable, 40, False, np.nan)])


def _residualisation(auroc=0.7, retained=0.2):
    return pd.DataFrame({"reference": [REF, REF], "edge": ["attention", "correlation"], "model": ["ols", "ols"],
                         "auroc": [auroc, 0.6], "retained": [retained, 0.9], "n_seeds": [10, 10],
                         "retained_sd": [0.01, 0.01]})


def test_each_verdict_follows_the_registry():
    found = {v.key: v for v in verdicts(_full(), {"residualisation": _residualisation(), "ablation_results": _sweep()},
                                        reference=REF)}
    assert found["degree"].stance == FOR and "+0.04" in found["degree"].sentence
    assert found["degree"].test.endswith(f"q = {probability(0.01)} (confirmatory family)")
    assert found["perturbation"].stance == AGAINST and "40 knock-downs" in found["perturbation"].sentence
    assert "significantly worse than correlation" in found["perturbation"].sentence
    assert found["baselines"].stance == AGAINST and "variance alone" in found["baselines"].sentence
    assert found["incremental"].stance == AGAINST and "-0.004" in found["incremental"].sentence
    assert found["confounding"].stance == AGAINST and "keeps 20%" in found["confounding"].sentence
    assert found["head_ranking"].stance == OPEN and "1 of 1 sizes" in found["head_ranking"].sentence
    assert "p = 0.5" in found["head_ranking"].test and "smallest possible 0.25" in found["head_ranking"].test
    assert bottom_line(list(found.values())).startswith("The evidence here is mostly against")


def test_stances_turn_with_the_evidence():
    found = {v.key: v for v in verdicts(
        _full(degree_q=0.4, baseline_q=0.3, gain_q=0.01, detectable=0.2),
        {"residualisation": _residualisation(retained=0.8)}, reference=REF)}
    assert found["degree"].stance == AGAINST and "does not rank" in found["degree"].sentence
    assert found["baselines"].stance == OPEN and found["baselines"].sentence.startswith("No: none of the 2")
    assert found["incremental"].stance == OPEN          # a loss, not significant, and the screen is underpowered
    assert found["confounding"].stance == FOR and found["head_ranking"].stance == UNTESTABLE


def test_a_run_without_the_analyses_says_so():
    empty = _registry([])
    found = verdicts(empty, {}, reference=REF)
    assert {v.stance for v in found} == {UNTESTABLE}
    assert bottom_line(found) == "This run has none of the analyses the verdicts read."


def test_a_margin_too_small_to_apportion_is_not_read_as_a_share():
    found = {v.key: v for v in verdicts(_full(), {"residualisation": _residualisation(auroc=0.5037, retained=401.2)},
                                        reference=REF)}
    assert found["confounding"].stance == AGAINST and "Too little to apportion" in found["confounding"].sentence
    assert "+0.0037 from chance" in found["confounding"].sentence and "%" not in found["confounding"].sentence
