"""The SAE positive control end to end: precompute on the embedded default (the simulation at full size,
both tiny models trained as the README's first command trains them; the stages the SAE does not read are left
out), whose cell states and network are known. On the read-out layer, each cell state and each simulated TF's
activity (read from its true regulon) must be tracked by some feature better than by any feature of an SAE
trained on the same activations with every dimension shuffled across rows; the best programmes by a wide
margin."""
import pandas as pd
import pytest

import precompute
from analysis.io.artifacts import read_manifest

FAST = ["--set", "ranking.n_null=10", "--set", "ablation.n_cells=0", "--set", "cssi.n_fine=0",
        "--set", "scaling.n_seeds=0", "--set", "perturbation.n_boot=10"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache = tmp_path_factory.mktemp("sae-control")
    assert precompute.main(["--cache", str(cache), "--quiet", *FAST, "--name", "control"]) == 0
    return {d.name.split("-")[1]: d for d in (cache / "artifacts").iterdir()}


@pytest.mark.parametrize("family", ["geneformer", "scgpt"])
def test_features_recover_the_simulated_states_and_tf_activities(runs, family):
    run_dir = runs[family]
    readout = read_manifest(run_dir).readout_layer
    table = pd.read_parquet(run_dir / "sae_programmes.parquet")
    at = table[table["layer"] == readout]
    states, tfs = at[at["kind"] == "cell_state"], at[at["kind"] == "tf_activity"]
    assert len(states) == 4 and len(tfs) >= 10                       # the simulation's 4 states, its TFs
    assert (at["r"] > at["null_r"]).all(), at[at["r"] <= at["null_r"]]
    assert states["r"].mean() > 2 * states["null_r"].mean()
    best = tfs.loc[tfs["r"].idxmax()]
    assert best["r"] > 0.5 and best["r"] > 3 * best["null_r"]
    assert states["r"].max() > 0.45
