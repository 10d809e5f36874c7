"""The planted-circuit positive control end to end: precompute on the embedded default with one head of the
last layer trained to carry the simulated network (analysis.interp.positive_control). The framework must rank that
head first against the simulated truth; zeroing it must degrade the dependent behaviour (target recall) by
more than the smallest effect of interest, and zeroing random heads must not."""
import json

import pandas as pd

import precompute

MARGIN = 0.01  # nats of target-recall loss: the smallest degradation we call an effect


def test_planted_head_is_found_and_causal(tmp_path):
    cache = tmp_path / "cache"
    assert precompute.main(["--cache", str(cache), "--quiet", "--set", "simulation.n_cells=150", "--set",
                            "train.epochs=1", "--set", "train.hidden_size=32", "--set", "train.n_layers=2",
                            "--set", "train.planted_head=0", "--set", "ranking.n_null=500",
                            "--set", "ablation.n_cells=80", "--set", "ablation.ks=1",
                            "--set", "ablation.n_random=3", "--set", "cssi.n_fine=0", "--name", "planted"]) == 0
    (run_dir,) = (cache / "artifacts").iterdir()
    log = json.loads((run_dir / "manifest.json").read_text())["provenance"]["model"]["training_log"]
    assert log[-1]["planted"] == "L1H0"
    ranking = pd.read_parquet(run_dir / "head_ranking.parquet")
    heads = ranking[(ranking["metric"] == "auroc") & (ranking["edge_type"] == "attention")
                    & (ranking["direction"] == "tf_to_target")].set_index(["layer", "head"])
    assert heads.loc[(1, 0), "rank"] == 1 and heads.loc[(1, 0), "q"] < 0.05
    abl = pd.read_parquet(run_dir / "ablation_results.parquet")
    recall = abl[(abl["readout"] == "target_recall_loss") & (abl["k"] == 1)]
    planted = recall[recall["intervention"] == "zero_head@L1[0]"].iloc[0]
    assert planted["family"] in ("top_k", "random_k") and planted["ci_low"] > MARGIN and planted["p"] < 1e-3
    random = recall[(recall["family"] == "random_k") & (recall["intervention"] != "zero_head@L1[0]")]
    assert len(random) >= 2 and (random["ci_high"] < MARGIN).all()
