"""The paper's registry tiers (SN16.2) beside the project's: which entry each test implements, and the ``paper`` family
corrected over exactly the tests the paper gives a p-value."""
from __future__ import annotations

import numpy as np
from statsmodels.stats.multitest import multipletests

from analysis.scoring.paper_registry import CONFIRMATORY, DESCRIPTIVE, ENTRIES, NOT_IN_PAPER, RULES, tier_comparison
from analysis.scoring.registry import StatsRegistry

# (analysis, hypothesis as the stages write it, project confirmatory, p) -> expected (paper entry, paper tier)
CASES = [
    ("reference_recovery", "TRRUST tf_to_target: attention L13 AUROC > null", False, 0.001, (16, CONFIRMATORY)),
    ("degree_null", "attention vs TRRUST: excess over degree null", True, 0.02, (25, CONFIRMATORY)),
    ("degree_null", "correlation vs TRRUST: excess over degree null", True, 0.004, (16, CONFIRMATORY)),
    ("incremental_value", "gene+attention > gene (perturbation split, logistic)", True, 0.3, (26, DESCRIPTIVE)),
    ("incremental_value", "gene+attention > gene (joint split, gbdt)", False, 0.5, (31, DESCRIPTIVE)),
    ("incremental_value", "gene+attention > gene (perturbation split, logistic) on the propensity-matched set",
     True, 0.6, (35, DESCRIPTIVE)),
    ("ablation", "top_k k=5 (zero_head@L1[1], 40 obs) changes perturbation_auroc", False, 0.2, (29, CONFIRMATORY)),
    ("ablation", "top_k k=5 (zero_head@L1[1], 40 obs) changes mlm_loss", True, 0.01, (29, NOT_IN_PAPER)),
    ("ablation", "random_k k=20 #1 (zero_head@L3[2], 40 obs) changes perturbation_auroc", False, 1e-6,
     (32, CONFIRMATORY)),
    ("ablation", "mlp_layer k=1 (zero_mlp@L8, 40 obs) changes perturbation_auroc", False, 1e-4, (34, CONFIRMATORY)),
    ("ablation", "composite_top_k k=5 (zero_head@L1[1], 40 obs) changes perturbation_auroc", False, 0.5,
     (32, DESCRIPTIVE)),
    ("perturbation_first", "attention L13 AUROC > 0.5", True, 0.3, (14, CONFIRMATORY)),
    ("perturbation_first", "correlation (absolute) AUROC > 0.5", False, 0.3, (14, NOT_IN_PAPER)),
    ("perturbation_first", "attention L13 vs correlation", True, 0.7, (23, CONFIRMATORY)),
    ("trivial_baselines", "baseline_variance vs correlation", True, 1e-20, (21, CONFIRMATORY)),
    ("trivial_baselines", "baseline_variance vs attention L13", True, 1e-9, (21, NOT_IN_PAPER)),
    ("layer_selection", "nested CV: any fold's held-out advantage (Bonferroni over folds)", False, 0.01,
     (30, CONFIRMATORY)),
    ("scaling", "L13 head mean f1 (TRRUST) drops from ~200 to ~500 cells", True, 0.002, (1, CONFIRMATORY)),
    ("scaling", "L13 head mean auroc (TRRUST) drops from ~200 to ~500 cells", False, 0.4, (20, DESCRIPTIVE)),
    ("sensitivity_grid", "correlation AUROC > 0.5 (lfc 0.25, 500 controls, 2000 genes)", False, 0.004,
     (18, CONFIRMATORY)),
    ("sae_regulatory", "L4 features responding to GATA1 knock-down prefer its TRRUST targets", False, 0.03,
     (0, NOT_IN_PAPER)),
    ("tf_bootstrap", "L13 mean global AUROC (TRRUST), 95% CI [0.48, 0.52]", False, np.nan, (22, DESCRIPTIVE)),
]


def registry_table():
    reg = StatsRegistry()
    for analysis, hypothesis, confirmatory, p, _ in CASES:
        reg.register(analysis, hypothesis, "t", p, effect=0.1, effect_name="d", n=10, confirmatory=confirmatory)
    return reg.table()


def test_each_test_names_the_paper_entry_and_tier_it_implements():
    table = registry_table()
    got = list(zip(table["paper_entry"], table["paper_tier"]))
    assert got == [expected for *_, expected in CASES]
    assert {entry for _, _, entry, _ in RULES} <= set(ENTRIES) and set(ENTRIES) == set(range(1, 38))


def test_the_paper_family_is_bh_over_exactly_the_tests_the_paper_gives_a_p_value():
    """``q_paper`` equals statsmodels' Benjamini-Hochberg over the paper-confirmatory p-values; the project's
    confirmatory family is corrected separately and keeps its own members (the degree-blind label-shuffle test is
    outside it, the incremental-value test inside)."""
    table = registry_table()
    paper = (table["paper_tier"] == CONFIRMATORY).to_numpy()
    expected = multipletests(table.loc[paper, "p"], method="fdr_bh")[1]
    assert np.allclose(table.loc[paper, "q_paper"], expected)
    assert table.loc[~paper, "q_paper"].isna().all()
    ours = table["confirmatory"].to_numpy()
    assert np.allclose(table.loc[ours, "q"], multipletests(table.loc[ours, "p"], method="fdr_bh")[1])
    shuffle = table["analysis"] == "reference_recovery"
    assert table.loc[shuffle, "q"].isna().all() and table.loc[shuffle, "q_paper"].notna().all()


def test_tier_comparison_counts_per_entry():
    table = registry_table()
    comparison = tier_comparison(table).set_index("paper_entry")
    assert comparison.loc[29, "tests"] == 2 and comparison.loc[29, "confirmatory_here"] == 1
    assert comparison.loc[29, "confirmatory_in_paper"] == 1 and comparison.loc[0, "title"] == "beyond the paper"
    significant = int(((table["paper_tier"] == CONFIRMATORY) & (table["q_paper"] < 0.05)).sum())
    assert comparison["significant_in_paper_family"].sum() == significant
    assert comparison["tests"].sum() == len(table)


def test_the_layer_search_rows_map_to_registry_30():
    reg = StatsRegistry()
    reg.register("layer_selection", "layer search: best of 18 layers (L15) vs correlation, Bonferroni over the layers",
                 "t", 0.01, effect=0.01, effect_name="d", n=280)
    reg.register("layer_selection", "nested CV: held-out advantage, 95% bootstrap CI [0.0010, 0.0200]", "t", np.nan,
                 effect=0.01, effect_name="d", n=280, confirmatory=False)
    reg.register("layer_selection", "attention L3 vs correlation", "t", 0.2, effect=0.01, effect_name="d", n=280)
    got = list(zip(reg.table()["paper_entry"], reg.table()["paper_tier"]))
    assert got == [(30, CONFIRMATORY), (30, DESCRIPTIVE), (24, CONFIRMATORY)]
