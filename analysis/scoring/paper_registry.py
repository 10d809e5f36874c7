"""Which entry of the paper's statistical test registry (Supplementary Note 16.2, analyses 1-37) each registered test
implements, and the tier the paper gives that test there.

The paper counts a test as confirmatory when its registry row carries an explicit p-value (95 tests, 63 significant
after one framework-wide Benjamini-Hochberg correction) and as descriptive otherwise (bootstrap CIs, CF-AUROCs,
ranges). This project's own tiers differ on purpose in places (the label-shuffle reference-recovery test is degree-blind
and descriptive here, the degree-preserving null confirmatory; incremental value is confirmatory here, a bootstrap
summary in the paper), so the registry keeps both: ``confirmatory`` is the project's, ``paper_tier`` the paper's,
and the ``paper`` family of :func:`analysis.scoring.registry.correct` corrects exactly the tests whose paper tier is
confirmatory, so a run's counts and claim verdicts can be set beside the paper's 63 of 95.

``paper_tier`` is ``confirmatory`` or ``descriptive`` for a test that matches a row of the paper's registry, and
``not in the paper`` for one the paper does not register: a read-out or variant the explorer adds inside one of the
paper's analyses (``paper_entry`` names that analysis), or an analysis beyond the paper (``paper_entry`` 0).
"""
from __future__ import annotations

import re

import pandas as pd

CONFIRMATORY, DESCRIPTIVE, NOT_IN_PAPER = "confirmatory", "descriptive", "not in the paper"
PAPER_CONFIRMATORY_TOTAL, PAPER_SIGNIFICANT = 95, 63     # Supplementary Note 16.4

ENTRIES = {
    1: "Scaling behavior", 2: "Mediation bias", 3: "Detectability theory", 4: "Cross-context consistency",
    5: "Perturbation validation", 6: "Cross-species ortholog", 7: "Pseudotime", 8: "Batch/donor leakage",
    9: "Calibration", 10: "CSSI", 11: "Synthetic validation", 12: "Multi-model", 13: "Controlled-composition scaling",
    14: "Perturbation-first validation", 15: "Robust attention residualization", 16: "Degree-preserving null models",
    17: "Attention-correlation mapping", 18: "Perturbation sensitivity", 19: "CSSI extended null",
    20: "K-sensitivity analysis", 21: "Trivial baseline comparison", 22: "Bootstrap per-TF CIs",
    23: "Attention perturbation-first", 24: "Full 18-layer perturbation-first", 25: "Attention-specific confound "
    "decomposition", 26: "Conditional incremental value", 27: "Per-head TRRUST ranking", 28: "Cross-context CRISPRa "
    "replication", 29: "Head-level causal ablation", 30: "Nested layer selection protocol", 31: "Hard-generalization "
    "incremental value", 32: "Expanded causal ablation", 33: "Cross-context T-cell CRISPRi replication",
    34: "Orthogonal causal interventions", 35: "Propensity-matched perturbation benchmark",
    36: "Intervention-fidelity diagnostics", 37: "Non-K562 perturbation-first replication",
}

# (analysis, hypothesis pattern, paper entry, paper tier): the first row whose analysis matches and whose pattern is
# found in the hypothesis decides. Patterns follow the hypotheses the stages register.
_ABLATION_READOUT = r"changes perturbation_auroc"
RULES: tuple[tuple[str, str, int, str], ...] = (
    ("scaling", r"\bf1\b.* drops from", 1, CONFIRMATORY),                 # sign test on top-k F1
    ("scaling", r"\bauroc\b.* drops from", 20, DESCRIPTIVE),              # continuous AUROC vs k / cells
    ("scaling", r"", 1, NOT_IN_PAPER),
    ("cssi_synthetic", r"", 10, CONFIRMATORY),                            # CSSI advantage, Wilcoxon over seeds
    ("cssi", r"", 10, DESCRIPTIVE),                                       # CSSI on real attention: layer analysis
    ("controlled_composition", r"", 13, CONFIRMATORY),
    ("perturbation_first", r"\((absolute|sign_matched)\)", 14, NOT_IN_PAPER),
    ("perturbation_first", r"AUROC > 0\.5", 14, CONFIRMATORY),
    ("perturbation_first", r"vs correlation", 23, CONFIRMATORY),
    ("perturbation_first_layers", r"", 24, NOT_IN_PAPER),
    ("attention_expression", r"", 12, CONFIRMATORY),                      # attention-expression correlation
    ("layer_biology", r"beyond expression similarity", 12, CONFIRMATORY),  # attention-regulation correlation
    ("layer_biology", r"", 12, NOT_IN_PAPER),
    ("residualisation", r"^attention", 25, DESCRIPTIVE),
    ("residualisation", r"^correlation vs", 15, DESCRIPTIVE),
    ("residualisation", r"", 15, NOT_IN_PAPER),
    ("reference_recovery", r"", 16, CONFIRMATORY),                        # label-shuffle permutation
    ("degree_null", r"^attention vs", 25, CONFIRMATORY),
    ("degree_null", r"^correlation vs", 16, CONFIRMATORY),
    ("degree_null", r"", 16, NOT_IN_PAPER),
    ("degree_null_per_tf", r"", 16, DESCRIPTIVE),
    ("sensitivity_grid", r"^TF vs non-TF", 18, DESCRIPTIVE),
    ("sensitivity_grid", r"", 18, CONFIRMATORY),
    ("trivial_baselines", r"vs correlation$", 21, CONFIRMATORY),
    ("trivial_baselines", r"", 21, NOT_IN_PAPER),
    ("tf_bootstrap", r"", 22, DESCRIPTIVE),
    ("layer_selection", r"bootstrap CI", 30, DESCRIPTIVE),
    ("layer_selection", r"^layer search: .*Bonferroni", 30, CONFIRMATORY),
    ("layer_selection", r"^nested CV", 30, CONFIRMATORY),
    ("layer_selection", r"vs correlation$", 24, CONFIRMATORY),
    ("incremental_value", r"propensity-matched", 35, DESCRIPTIVE),
    ("incremental_value", r"\((gene|joint) split", 31, DESCRIPTIVE),
    ("incremental_value", r"", 26, DESCRIPTIVE),
    ("head_screen", r"", 27, DESCRIPTIVE),
    ("direct_target", r"", 35, DESCRIPTIVE),                              # TRRUST direct-target AUROC
    ("replication", r"vs correlation$", 37, CONFIRMATORY),                # 28 and 33 are the same test elsewhere
    ("replication", r"", 37, NOT_IN_PAPER),
    ("ablation", r"^(top_k k=5|random_k k=5|entropy_matched_random_k) .*" + _ABLATION_READOUT, 29, CONFIRMATORY),
    ("ablation", r"^(top_k|random_k|bottom_k) .*" + _ABLATION_READOUT, 32, CONFIRMATORY),
    ("ablation", r"^(uniform_top_k|uniform_random_k|mlp_layer|mlp_block) .*" + _ABLATION_READOUT, 34, CONFIRMATORY),
    ("ablation", r"^(composite_top_k|whole_layer) .*" + _ABLATION_READOUT, 32, DESCRIPTIVE),
    ("ablation", r"", 29, NOT_IN_PAPER),                                  # masked-gene loss, target recall
)


def paper_mapping(registry: pd.DataFrame) -> pd.DataFrame:
    """``paper_entry`` (1-37, 0 beyond the paper) and ``paper_tier`` for each row of a registry table (columns
    ``analysis``, ``hypothesis``), index-aligned with it."""
    entries, tiers = [], []
    for analysis, hypothesis in zip(registry["analysis"], registry["hypothesis"]):
        entry, tier = 0, NOT_IN_PAPER
        for rule_analysis, pattern, rule_entry, rule_tier in RULES:
            if rule_analysis == analysis and re.search(pattern, hypothesis):
                entry, tier = rule_entry, rule_tier
                break
        entries.append(entry)
        tiers.append(tier)
    return pd.DataFrame({"paper_entry": entries, "paper_tier": tiers}, index=registry.index)


def tier_comparison(registry: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """One row per paper entry the run registers tests for: entry, title, tests, the project's confirmatory count and
    the paper-tier confirmatory count, and how many of the latter have q < ``alpha`` in the ``paper`` family; tests
    beyond the paper are one row with entry 0. Input: a corrected registry (``paper_entry``, ``paper_tier``,
    ``q_paper``, ``confirmatory``)."""
    frame = registry.assign(paper_confirmatory=registry["paper_tier"] == CONFIRMATORY,
                            paper_significant=(registry["paper_tier"] == CONFIRMATORY) & (registry["q_paper"] < alpha))
    out = frame.groupby("paper_entry").agg(tests=("test_id", "size"), confirmatory_here=("confirmatory", "sum"),
                                           confirmatory_in_paper=("paper_confirmatory", "sum"),
                                           significant_in_paper_family=("paper_significant", "sum")).reset_index()
    out.insert(1, "title", out["paper_entry"].map(ENTRIES).fillna("beyond the paper"))
    return out
