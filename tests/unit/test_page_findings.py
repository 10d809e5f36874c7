"""The evidence pages' findings (analysis.scoring.page_findings) against registries and tables built here: each
finding's stance follows its test, and its sentence carries the numbers counted by hand."""
from __future__ import annotations

import pandas as pd

from analysis.scoring.page_findings import FINDING_KEYS, page_findings
from analysis.scoring.verdicts import AGAINST, FOR, OPEN, UNTESTABLE

REF = "TRRUST"


def _registry(depth_q=0.9, n_layers=4, cssi_q=0.01, cssi_gain=0.03) -> pd.DataFrame:
    rows = [("layer_biology", f"{REF} recovery trends with depth", "Spearman", 0.75, -0.4, n_layers, True, depth_q),
            ("cssi", f"{REF} tf_to_target: L3 mean CSSI-max at 5 strata AUROC gain over pooled > random strata",
             "random-strata permutation", 0.01, cssi_gain, 100, True, cssi_q),
            ("cssi", f"{REF} tf_to_target: L3 mean CSSI-max at 2 strata AUROC gain over pooled > random strata",
             "random-strata permutation", 0.5, 0.2, 100, False, float("nan"))]
    frame = pd.DataFrame(rows, columns=["analysis", "hypothesis", "test", "p", "effect", "n", "confirmatory",
                                        "q_confirmatory"])
    return frame.assign(test_id=frame["analysis"] + "::" + frame["hypothesis"])


def _ranking(qs=(0.01, 0.03, 0.4, 0.9), values=(0.71, 0.66, 0.52, 0.49), correlation=0.6) -> pd.DataFrame:
    heads = [(REF, "tf_to_target", "attention", layer, head, "auroc", v, 0.001, q)
             for (layer, head), v, q in zip([(0, 0), (0, 1), (1, 0), (1, 1)], values, qs)]
    other = [(REF, "tf_to_target", "spearman", -1, -1, "auroc", correlation, 0.001, 0.001),
             (REF, "target_to_tf", "attention", 0, 0, "auroc", 0.99, 0.001, 0.001),
             ("other", "tf_to_target", "attention", 0, 0, "auroc", 0.99, 0.001, 0.001)]
    return pd.DataFrame(heads + other, columns=["reference", "direction", "edge_type", "layer", "head", "metric",
                                                "value", "p", "q"])


def _biology() -> pd.DataFrame:
    rows = [(REF, "regulatory", "attention_layer_mean", layer, auroc) for layer, auroc in enumerate([0.5, 0.62, 0.55])]
    rows += [(REF, "regulatory", "spearman", -1, 0.58), (REF, "pairs", "attention_layer_mean", 0, 0.99)]
    return pd.DataFrame(rows, columns=["reference", "kind", "edge_type", "layer", "auroc"])


def _sae(passes=(3, 1), rotated=(0, 2)) -> pd.DataFrame:
    rows = []
    for layer, (n_pass, n_rot) in enumerate(zip(passes, rotated)):
        rows += [(layer, f"TF{i}", i < n_pass, i < n_rot) for i in range(4)]
    return pd.DataFrame(rows, columns=["layer", "tf", "passes", "rotated_passes"])


def _found(**registry):
    return page_findings(_registry(**registry), {"head_ranking": _ranking(), "layer_biology": _biology(),
                                                 "sae_regulatory": _sae()}, reference=REF)


def test_each_page_finding_counts_by_hand():
    found = _found()
    heads = found["heads"]
    assert heads.stance == FOR                       # two heads pass, the best (0.71) beats correlation (0.6)
    assert heads.sentence.startswith(f"2 of 4 heads recover {REF} (TF -> target)")
    assert "the best, L0H0, reaches AUROC 0.71 against 0.6 for Spearman" in heads.sentence
    layers = found["layers"]
    assert layers.stance == OPEN and "rho -0.4 over 4 layers" in layers.sentence
    assert "cannot go below p = 0.083" in layers.sentence                          # 2 / 4! for an exact test
    assert "highest at L1 (head-mean AUROC 0.62, Spearman correlation 0.58)" in layers.sentence
    cssi = found["cssi"]
    assert cssi.stance == FOR and "L3 mean CSSI-max at 5 strata" in cssi.sentence and "+0.03" in cssi.sentence
    assert tuple(v.key for v in found.values()) == FINDING_KEYS          # the app picks its reader by these keys
    features = found["features"]
    assert features.stance == FOR and "At L0" in features.sentence            # 3 of 4 pass, none with rotated targets
    assert "for 3 of 4 TFs, and another TF's targets for 0 (layers L0 3, L1 1)" in features.sentence


def test_stances_turn_with_the_evidence():
    assert _found(depth_q=0.01)["layers"].stance == FOR
    assert _found(n_layers=18)["layers"].stance == AGAINST          # enough layers and still no trend
    assert _found(cssi_gain=-0.01)["cssi"].stance == AGAINST
    assert _found(cssi_q=0.3)["cssi"].stance == OPEN
    weak = page_findings(_registry(), {"head_ranking": _ranking(values=(0.55, 0.5, 0.5, 0.5))}, reference=REF)
    assert weak["heads"].stance == OPEN                             # passes, but correlation does better
    none = page_findings(_registry(), {"head_ranking": _ranking(qs=(0.2, 0.3, 0.4, 0.9)),
                                       "sae_regulatory": _sae(passes=(0, 0))}, reference=REF)
    assert none["heads"].stance == AGAINST and none["heads"].sentence.startswith("0 of 4")
    assert none["features"].stance == AGAINST


def test_a_run_without_the_analyses_says_so():
    empty = pd.DataFrame(columns=["analysis", "hypothesis", "test", "p", "effect", "n", "confirmatory",
                                  "q_confirmatory", "test_id"])
    found = page_findings(empty, {}, reference=REF)
    assert {v.stance for v in found.values()} == {UNTESTABLE}
