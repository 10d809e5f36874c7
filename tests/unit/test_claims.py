"""The claim-to-evidence map on hand-built runs whose every verdict is known by construction, including one that changes
with the Benjamini-Hochberg family and the premises that make a claim untestable."""
from __future__ import annotations

import pandas as pd
import pytest

from analysis.scoring.claims import CLAIMS, NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED, claim_map
from analysis.scoring.registry import StatsRegistry


def registry(extra_nulls: int) -> pd.DataFrame:
    """A run that supports gene-level dominance, no incremental value, the ablation null, CSSI and layer organisation,
    and not scaling degradation. ``extra_nulls`` descriptive p = 1 tests dilute only the ``all`` family."""
    reg = StatsRegistry()
    r = reg.register
    for base, p in (("baseline_variance", 1e-4), ("baseline_mean", 0.4)):
        r("trivial_baselines", f"{base} vs attention L3", "Wilcoxon", p, effect=1.0, effect_name="d", n=50)
        r("trivial_baselines", f"{base} vs correlation", "Wilcoxon", p, effect=0.8, effect_name="d", n=50)
    r("trivial_baselines", "baseline_tf_degree vs attention L3", "Wilcoxon", 1e-6, effect=2.0, effect_name="d", n=50)
    r("incremental_value", "gene+attention > gene (perturbation split, logistic)", "bootstrap", 0.6, effect=-0.01,
      effect_name="delta", n=500)
    r("incremental_value", "gene+correlation > gene (perturbation split, logistic)", "bootstrap", 0.3, effect=0.004,
      effect_name="delta", n=500)
    r("ablation", "top_k k=5 (zero_head@L3[0,1,2,3,4], 100 obs) changes mlm_loss", "Wilcoxon", 0.5, effect=0.001,
      effect_name="delta", n=100)
    # significant in its own analysis's primary family only: 0.02 survives BH alone, not among the 40 tests
    r("cssi", "simulated truth tf_to_target: L3 mean CSSI-max at 5 strata AUROC gain", "random strata", 0.02,
      effect=0.03, effect_name="delta", n=100)
    for ref, effect in (("STRING>=700", -1.0), ("TRRUST", 1.0)):
        r("layer_biology", f"{ref} recovery trends with depth", "Spearman", 1e-5, effect=effect, effect_name="rho",
          n=18)
    r("scaling", "L3 head mean f1 (TRRUST) drops from ~48 to ~120 cells", "sign test", 0.5, effect=0.4,
      effect_name="share", n=5)
    r("residualisation", "attention vs TRRUST, ols: share retained", "residual AUROC", float("nan"), effect=0.2,
      effect_name="share", n=1, confirmatory=False)
    for i in range(extra_nulls):
        r("sensitivity_grid", f"descriptive {i}", "Wilcoxon", 1.0, effect=0.0, effect_name="-", n=10,
          confirmatory=False)
    return reg.table()


def tables(attention_auroc: float = 0.70) -> dict[str, pd.DataFrame]:
    residual = pd.DataFrame({"reference": "TRRUST", "edge": ["attention", "correlation"], "model": "ols",
                             "auroc": [attention_auroc, 0.65], "auroc_residual": [0.54, 0.64],
                             "retained": [0.2, 0.93], "r2_covariates": 0.3})
    fidelity = pd.DataFrame({"intervention": "zero", "family": "top_k", "k": [5, 5], "draw": -1, "layer": [0, 1],
                             "hidden_cos_mean": [0.01, 0.02], "hidden_cos_max": [0.05, 0.08]})
    biology = pd.DataFrame({"reference": ["STRING>=700", "TRRUST"], "kind": ["pairs", "regulatory"],
                            "edge_type": "attention_layer_mean", "layer": 0, "auroc": 0.6, "n_pos": 10, "n_neg": 90})
    return {"residualisation": residual, "ablation_fidelity": fidelity, "layer_biology": biology}


def verdicts(frame: pd.DataFrame, family: str) -> dict[str, str]:
    return frame[frame["family"] == family].set_index("claim")["verdict"].to_dict()


def test_every_verdict_known_by_construction():
    out = claim_map(registry(extra_nulls=0), tables())
    assert set(out["claim"]) == {c.key for c in CLAIMS} and len(out) == 4 * len(CLAIMS)
    got = verdicts(out, "confirmatory")
    assert got == {"gene_level_dominance": SUPPORTED, "no_incremental_value": SUPPORTED,
                   "attention_more_confounded": SUPPORTED, "ablation_null": SUPPORTED, "cssi_gain": SUPPORTED,
                   "layer_organisation": SUPPORTED, "scaling_degradation": NOT_SUPPORTED,
                   "cross_context": NOT_TESTABLE}
    dominance = out[(out["claim"] == "gene_level_dominance") & (out["family"] == "confirmatory")].iloc[0]
    assert "baseline_variance" in dominance["reason"] and "baseline_mean beat" not in dominance["reason"]
    assert "trivial_baselines::baseline_variance vs attention L3" in dominance["tests"]


def test_a_verdict_that_depends_on_the_family_is_flagged_unstable():
    out = claim_map(registry(extra_nulls=40), tables())
    cssi = out[out["claim"] == "cssi_gain"].set_index("family")["verdict"]
    assert cssi["confirmatory"] == SUPPORTED and cssi["primary_per_analysis"] == SUPPORTED
    assert cssi["all"] == NOT_SUPPORTED                 # 41+ p-values in the all family: q of 0.02 exceeds 0.05
    assert not out[out["claim"] == "cssi_gain"]["stable"].any()
    assert out[out["claim"] == "no_incremental_value"]["stable"].all()
    # one primary test per analysis keeps the STRING trend only, so the TRRUST half of the claim leaves that family
    layers = out[out["claim"] == "layer_organisation"].set_index("family")["verdict"]
    assert layers["confirmatory"] == SUPPORTED and layers["primary_per_analysis"] == NOT_SUPPORTED


def test_premises_make_claims_untestable_and_reversals_are_not_supported():
    out = claim_map(registry(extra_nulls=0), tables(attention_auroc=0.48))
    row = out[(out["claim"] == "attention_more_confounded") & (out["family"] == "all")].iloc[0]
    assert row["verdict"] == NOT_TESTABLE and "-0.02 from chance" in row["reason"]
    near = claim_map(registry(extra_nulls=0), tables(attention_auroc=0.505))      # a margin too small to apportion
    row = near[(near["claim"] == "attention_more_confounded") & (near["family"] == "all")].iloc[0]
    assert row["verdict"] == NOT_TESTABLE and "+0.005 from chance, under the 0.02" in row["reason"]
    bare = StatsRegistry()
    bare.register("incremental_value", "gene+attention > gene (perturbation split, logistic)", "bootstrap", 1e-5,
                  effect=0.05, effect_name="delta", n=500)
    out = claim_map(bare.table(), {})
    got = verdicts(out, "confirmatory")
    assert got["no_incremental_value"] == NOT_SUPPORTED
    assert {k for k, v in got.items() if v == NOT_TESTABLE} == {c.key for c in CLAIMS} - {"no_incremental_value"}
    replication = StatsRegistry()
    replication.register("replication", "read-out advantage differs: K562 vs RPE1", "Mann-Whitney", 1e-4,
                         effect=0.05, effect_name="diff", n=200, confirmatory=False)
    out = claim_map(pd.concat([bare.table(), replication.table()]), {})
    assert verdicts(out, "all")["cross_context"] == SUPPORTED
    assert verdicts(out, "confirmatory")["cross_context"] == NOT_SUPPORTED    # a descriptive test: not in the family
    assert "not in this family" in out[(out["claim"] == "cross_context")
                                       & (out["family"] == "confirmatory")]["reason"].iloc[0]


def test_a_no_op_intervention_cannot_support_the_ablation_null():
    t = tables()
    t["ablation_fidelity"]["hidden_cos_max"] = 1e-5
    out = claim_map(registry(extra_nulls=0), t)
    assert set(out[out["claim"] == "ablation_null"]["verdict"]) == {NOT_TESTABLE}


def test_zeroing_every_head_is_not_a_top_ranked_set():
    """A significant k = every head leaves the claim to the ranked sets; without n_heads it counts against it."""
    reg = registry(extra_nulls=0)
    extra = StatsRegistry()
    extra.register("ablation", "top_k k=16 (zero_head@L0[0,1,2,3]+..., 100 obs) changes mlm_loss", "Wilcoxon", 1e-6,
                   effect=0.05, effect_name="delta", n=100)
    reg = pd.concat([reg, extra.table()], ignore_index=True)
    reg.loc[reg["confirmatory"], "q"] = reg.loc[reg["confirmatory"], "p"]   # keep the hand-set significance simple
    for family in ("confirmatory", "all", "primary_per_analysis"):
        reg[f"q_{family}"] = reg["q"]
    t = tables()
    t["ablation_fidelity"] = pd.concat([t["ablation_fidelity"], t["ablation_fidelity"].assign(k=16)])
    judged = claim_map(reg, t, n_heads=16).query("claim == 'ablation_null' and family == 'confirmatory'").iloc[0]
    assert judged["verdict"] == SUPPORTED and "k=16 (every head" in judged["reason"]
    unknown = claim_map(reg, t).query("claim == 'ablation_null' and family == 'confirmatory'").iloc[0]
    assert unknown["verdict"] == NOT_SUPPORTED


def test_under_the_paper_family_the_ablation_claim_reads_perturbation_auroc():
    """The paper registers its head ablations on perturbation AUROC (SN16.2, 29 and 32): a top-k set that leaves the
    masked-gene loss alone but moves perturbation AUROC supports the null in the project's families and not in the
    paper's."""
    reg = StatsRegistry()
    reg.register("ablation", "top_k k=5 (zero_head@L3[0,1,2,3,4], 100 obs) changes mlm_loss", "Wilcoxon", 0.5,
                 effect=0.001, effect_name="delta", n=100)
    reg.register("ablation", "top_k k=5 (zero_head@L3[0,1,2,3,4], 40 obs) changes perturbation_auroc", "Wilcoxon",
                 1e-4, effect=-0.05, effect_name="delta", n=40)
    out = claim_map(reg.table(), tables()).query("claim == 'ablation_null'").set_index("family")
    assert out.loc["confirmatory", "verdict"] == SUPPORTED and "masked-behaviour loss" in out.loc["confirmatory",
                                                                                                  "reason"]
    assert out.loc["paper", "verdict"] == NOT_SUPPORTED and "perturbation_auroc" in out.loc["paper", "reason"]
    assert not out["stable"].any()


def test_model_readings_restate_each_verdict_with_the_papers_finding():
    from analysis.scoring.claims import model_readings
    claims = claim_map(registry(extra_nulls=0), tables())
    readings = model_readings(claims).set_index("claim")
    by_key = {c.key: c for c in CLAIMS}
    first = claims[claims["family"] == "confirmatory"].set_index("claim")
    assert list(readings.index) == [c.key for c in CLAIMS]
    for key, row in readings.iterrows():
        verdict = first.loc[key, "verdict"]
        assert row["verdict"] == verdict and row["paper"] == by_key[key].paper
        want = {SUPPORTED: by_key[key].if_supported, NOT_SUPPORTED: by_key[key].if_not}.get(verdict)
        assert row["reading"] == want if want else row["reading"].startswith("Not testable here: ")
