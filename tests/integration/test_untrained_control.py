"""The untrained control arm on the embedded default: ``--control random-weights`` adds, for each family's trained tiny
model, its twin with random weights on the same cells and settings; the Claims page sets every verdict and the head
ranking beside the twin's."""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest

import precompute
from analysis.scoring.untrained_control import (ARCHITECTURE, LEARNED, UNTESTED, claims_beside_control,
                                                is_untrained_twin, untrained_twin)
from app.data import ArtifactStore
from app.pages.claims import claims_of, control_note, wide
from tests.conftest import SMALL


@pytest.fixture(scope="module")
def with_twins(embedded_cache, tmp_path_factory):
    """(store, family -> trained run id): the embedded default at test size (its trained models and data reused;
    ablation, CSSI and SAEs off to keep the test short) and the untrained twins."""
    cache, _ = embedded_cache
    copy = tmp_path_factory.mktemp("twins")
    shutil.copytree(cache, copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns("artifacts", "locks"))
    assert precompute.main(["--cache", str(copy), *SMALL, "--set", "ablation.n_cells=0", "--set", "cssi.n_fine=0",
                            "--set", "sae.run=off", "--control", "random-weights"]) == 0
    store = ArtifactStore(copy)
    trained = {m.family: m.run_id for m in store.runs()[0] if not m.config.model.random_init}
    return store, trained


@pytest.mark.parametrize("family", ["geneformer", "scgpt"])
def test_each_trained_run_has_an_untrained_twin_on_the_same_cells(with_twins, family):
    store, runs = with_twins
    manifests, skipped = store.runs()
    assert len(manifests) == 4 and not skipped
    trained = store.manifest(runs[family])
    twin = untrained_twin(trained, manifests)
    assert twin is not None and twin.config.model.random_init and twin.model.family == family
    assert "random weights" in twin.title and "random weights" not in trained.title
    assert twin.inputs["data"] == trained.inputs["data"] and twin.data.n_cells == trained.data.n_cells
    assert store.panel(twin.run_id)["gene_id"].tolist() == store.panel(trained.run_id)["gene_id"].tolist()
    head_auroc = [store.ranking(r).query("edge_type == 'attention' and metric == 'auroc'")
                  .sort_values(["reference", "direction", "layer", "head"])["value"].to_numpy()
                  for r in (trained.run_id, twin.run_id)]
    assert head_auroc[0].shape == head_auroc[1].shape and not np.allclose(*head_auroc)   # other weights
    moved = dataclasses.replace(twin.config, perturbation=dataclasses.replace(twin.config.perturbation, seed=99))
    assert not is_untrained_twin(trained, dataclasses.replace(twin, config=moved))      # other settings: no twin
    assert untrained_twin(twin, manifests) is None                                       # a twin has no twin


@pytest.mark.parametrize("family", ["geneformer", "scgpt"])
def test_the_claims_page_sets_each_verdict_beside_the_twins(with_twins, family):
    store, runs = with_twins
    run_id = runs[family]
    claims, _, twin = claims_of(store, run_id, [])
    twin_claims, _, _ = claims_of(store, twin.run_id, [])
    assert claims["control_verdict"].notna().all()
    expected = twin_claims.set_index(["claim", "family"])["verdict"]
    assert (claims.set_index(["claim", "family"])["control_verdict"] == expected.loc[
        list(zip(claims["claim"], claims["family"]))].to_numpy()).all()
    supported = claims["verdict"] == "supported"
    assert set(claims.loc[supported & (claims["control_verdict"] == "supported"), "reading"]) <= {ARCHITECTURE}
    assert set(claims.loc[supported & (claims["control_verdict"] == "not supported"), "reading"]) <= {LEARNED}
    assert (claims.loc[~supported, "reading"] == "").all()
    table = wide(claims)
    assert {"untrained twin", "reading"} <= set(table.columns)
    note = control_note(store, run_id, claims, twin)
    assert note.startswith(f"Untrained twin {twin.run_id}: best head on ") and "rho = " in note
    assert "untrained control" in control_note(store, twin.run_id, twin_claims, None)


def test_the_reading_of_a_verdict_beside_its_twins():
    """Supported by both: architecture or data; by the trained model only: learned; untestable in the twin: said so;
    a claim the run does not support has no reading."""
    run = pd.DataFrame({"claim": ["a", "b", "c", "d", "e"], "family": "confirmatory",
                        "verdict": ["supported", "supported", "supported", "not supported", "not testable"]})
    twin = run.assign(verdict=["supported", "not supported", "not testable", "supported", "not testable"])
    out = claims_beside_control(run, twin)
    assert out["reading"].tolist() == [ARCHITECTURE, LEARNED, UNTESTED, "", ""]


def test_a_random_weights_run_cannot_take_a_random_weights_control(tmp_path, capsys):
    rc = precompute.main(["--cache", str(tmp_path), "--random-weights", "--control", "random-weights", "--plan"])
    assert rc == 2 and "already random" in capsys.readouterr().err
    assert not (tmp_path / "artifacts").exists()
