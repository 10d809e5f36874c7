"""precompute end to end: embedded default (small), the real 297-cell dataset with real gc30M dictionaries,
a V1-10M-shaped random model and real TRRUST; resume after completion; bad inputs leave nothing in the cache."""
from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import precompute
from analysis.io.artifacts import sha256_path
from app.data import ArtifactStore
from tests.conftest import shared_path

SMALL = ["--quiet", "--set", "simulation.n_cells=150", "--set", "train.epochs=1", "--set", "train.hidden_size=32",
         "--set", "train.n_layers=2", "--set", "ranking.n_null=30", "--set", "ablation.n_cells=40",
         "--set", "cssi.n_strata=2,3,5", "--set", "cssi.primary_n_strata=3", "--set", "cssi.min_size=5", "--set", "cssi.n_null=20",
         "--set", "cssi.n_gene_null=5", "--set", "cssi.synthetic_seeds=1", "--name", "small"]


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    assert precompute.main(["--cache", str(cache), *SMALL]) == 0
    (run_dir,) = (cache / "artifacts").iterdir()
    return cache, run_dir


def test_embedded_run_is_complete(embedded_run):
    cache, run_dir = embedded_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for rel, meta in manifest["files"].items():
        assert sha256_path(run_dir / rel) == meta["sha256"]
    assert {"head_ranking.parquet", "attention_sums.npy", "edges_attention.npy", "panel.parquet"} <= set(manifest["files"])
    assert manifest["model"]["n_layers"] == 2 and manifest["references"][0]["name"] == "simulated truth"
    assert manifest["versions"]["torch"] and manifest["inputs"]["data"]
    store = ArtifactStore(cache)
    ranking = store.ranking(run_dir.name)
    assert set(ranking["direction"]) == {"tf_to_target", "target_to_tf", "symmetric"}
    assert set(ranking["edge_type"]) == {"attention", "attention_layer_mean", "spearman"}
    auroc = ranking[(ranking["metric"] == "auroc") & (ranking["edge_type"] == "spearman")]["value"]
    assert (auroc > 0.6).all()  # correlation recovers the simulated network: the simulation has signal
    assert store.head_matrix(run_dir.name, 1, 0).shape == (len(store.panel(run_dir.name)),) * 2


def test_embedded_run_has_perturbation_and_confound_tables(embedded_run):
    cache, run_dir = embedded_run
    store = ArtifactStore(cache)
    run = run_dir.name
    per = store.table(run, "perturbation_auroc")
    assert per["perturbation"].nunique() >= 3
    assert {"attention", "attention_layer_mean", "spearman", "baseline_variance", "baseline_mean",
            "baseline_detection", "baseline_tf_degree"} <= set(per["edge_type"])
    grid = store.table(run, "sensitivity_grid")
    assert grid[["lfc_threshold", "n_control", "universe_size"]].drop_duplicates().shape[0] == 27
    inc = store.table(run, "incremental_value")
    assert set(inc["split"]) == {"perturbation", "gene", "joint"} and set(inc["model"]) == {"logistic", "gbdt"}
    assert {"gene+attention", "gene+correlation", "gene+sim_oracle", "gene+sim_gene_only"} <= set(inc["feature_set"])
    reg = store.table(run, "statistics_registry")
    assert {"reference_recovery", "perturbation_first", "trivial_baselines", "incremental_value", "degree_null",
            "residualisation", "sensitivity_grid", "head_screen"} <= set(reg["analysis"])
    assert reg["test_id"].is_unique and reg.loc[reg["confirmatory"], "q"].notna().all()
    assert (run_dir / "statistics_registry.csv").is_file()
    abl = store.table(run, "ablation_results")
    assert abl.groupby("family")["draw"].nunique()["random_k"] == 3
    assert {"mlm_loss", "mlm_accuracy", "reference_auroc", "perturbation_auroc"} <= set(abl["readout"])
    fid = store.table(run, "ablation_fidelity")
    # every head intervention moves the hidden states after its layer: no silent no-op
    assert (fid[fid["layer"] == fid["layer"].max()]["hidden_cos_mean"] > 0).all()


def test_embedded_run_has_cssi(embedded_run):
    cache, run_dir = embedded_run
    store = ArtifactStore(cache)
    run = run_dir.name
    cssi = store.cssi(run)
    assert len(cssi.cells) == 150 and cssi.params["representation"] == "embedding"
    assert sorted(cssi.strata.levels["n_strata"].unique()) == [2, 3, 5]
    for k in (2, 3, 5):
        assert np.unique(cssi.strata.cell_labels(k)).size == k
    # fine clusters and random groups each partition the cells: their sums are the pooled store of those layers
    pooled = np.load(run_dir / "attention_sums.npy")[list(cssi.params["layers"])]
    sums, f = np.asarray(cssi.source.group_sums), cssi.strata.n_fine
    assert np.allclose(sums[:f].sum(0), pooled, rtol=1e-4, atol=1e-4)
    assert np.allclose(sums[f:].sum(0), pooled, rtol=1e-4, atol=1e-4)
    assert np.array_equal(np.asarray(cssi.source.group_counts[:f]).sum(0), np.load(run_dir / "pair_counts.npy"))
    curve = store.table(run, "cssi_curve")
    n_sites = len(cssi.source.sites)   # 2 layers x 4 heads + 2 layer means + Spearman
    assert n_sites == 11 and len(curve) == 3 * n_sites * 4 * 2
    assert (curve["n_found"] == curve["n_strata"]).all() and (curve["null_low"] <= curve["null_high"]).all()
    assert len(store.table(run, "cssi_null")) == 3 * n_sites * 4 * 2 * 20
    reg = store.table(run, "statistics_registry")
    tests = reg[reg["analysis"] == "cssi"]
    assert tests["confirmatory"].sum() == 1
    assert "L1 mean CSSI-max at 3 strata" in tests.loc[tests["confirmatory"], "hypothesis"].iloc[0]
    assert "cssi_synthetic" in set(reg["analysis"])
    assert set(store.table(run, "cssi_synthetic")["config"]) == {"Small", "Medium", "Large", "XLarge", "XXLarge",
                                                                 "Massive"}


def test_rerun_reuses_finished_stages(embedded_run):
    cache, run_dir = embedded_run
    before = (run_dir / "attention_sums.npy").stat().st_mtime_ns
    # simulate a killed run: the complete run becomes a partial one, then precompute resumes it
    partial = run_dir.with_name(run_dir.name + ".partial")
    run_dir.rename(partial)
    (partial / "manifest.json").unlink()
    assert precompute.main(["--cache", str(cache), *SMALL]) == 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    skipped = {t["stage"]: t["skipped"] for t in manifest["stage_timings"]}
    assert skipped["attention"] and skipped["ablation"] and skipped["cssi"]
    assert (run_dir / "attention_sums.npy").stat().st_mtime_ns == before
    assert not partial.exists()


def mixology_h5ad(path, n_cells=None):
    counts = pd.read_csv(shared_path("scrnaseq/sc_mixology/sc_celseq2_5cl_p1.count.csv.gz"), index_col=0)
    meta = pd.read_csv(shared_path("scrnaseq/sc_mixology/sc_celseq2_5cl_p1.metadata.csv.gz"), index_col=0)
    counts = counts.iloc[:, : n_cells or counts.shape[1]]
    adata = ad.AnnData(X=sp.csr_matrix(counts.T.to_numpy(dtype=np.float32)),
                       obs=meta.reindex(counts.columns)[["cell_line_demuxlet"]].astype(str),
                       var=pd.DataFrame(index=counts.index))
    adata.write_h5ad(path)
    return path


def test_real_dataset_v1_shape_real_trrust(tmp_path):
    data = mixology_h5ad(tmp_path / "mixology.h5ad")
    model = shared_path("geneformer/configs/Geneformer-V1-10M")
    cache = tmp_path / "cache"
    rc = precompute.main(["--cache", str(cache), "--quiet", "--data", str(data), "--model", str(model),
                          "--random-weights", "--dictionaries", str(shared_path("geneformer/dict_gc30M")),
                          "--reference", str(shared_path("regulatory/trrust_rawdata.human.tsv")),
                          "--cell-state-col", "cell_line_demuxlet", "--max-cells", "24", "--panel-size", "200",
                          "--n-null", "20", "--name", "mixology", "--set", "ablation.n_cells=2", "--set",
                          "ablation.ks=1", "--set", "ablation.n_random=1", *CSSI_24_CELLS])
    assert rc == 0
    (run_dir,) = (cache / "artifacts").iterdir()
    m = json.loads((run_dir / "manifest.json").read_text())
    assert (m["model"]["n_layers"], m["model"]["n_heads"], m["model"]["max_len"]) == (6, 4, 2048)
    assert m["data"]["n_cells"] == 24 and m["model"]["random_init"]
    ranking = pd.read_parquet(run_dir / "head_ranking.parquet")
    heads = ranking[(ranking["edge_type"] == "attention") & (ranking["metric"] == "auroc")]
    assert len(heads) == 6 * 4 * 3 and heads["n_pos"].iloc[0] > 0
    assert set(ranking["reference"]) == {"TRRUST"}
    ablation = pd.read_parquet(run_dir / "ablation_results.parquet")
    assert {"top_k", "bottom_k", "random_k", "uniform_top_k", "whole_layer", "mlp_layer"} <= set(ablation["family"])
    assert "perturbation_auroc" not in set(ablation["readout"])  # no perturbation column in this dataset
    cells = pd.read_parquet(run_dir / "cssi_cells.parquet")
    assert len(cells) == 24 and cells["cell_state"].str.len().gt(0).all()   # the real cell-line labels
    curve = pd.read_parquet(run_dir / "cssi_curve.parquet")
    assert set(curve["reference"]) == {"TRRUST"} and set(curve["n_strata"]) == {2, 3}
    assert curve.loc[curve["edge_type"] == "attention", "layer"].nunique() == 6


CSSI_24_CELLS = ["--set", "cssi.n_neighbors=5", "--set", "cssi.min_size=2", "--set", "cssi.n_fine=6", "--set",
                 "cssi.n_random_groups=4", "--set", "cssi.n_strata=2,3", "--set", "cssi.primary_n_strata=2",
                 "--set", "cssi.n_null=10", "--set", "cssi.n_gene_null=3", "--set", "cssi.synthetic_seeds=0"]


def _assert_no_artifacts(cache):
    arts = cache / "artifacts"
    assert not arts.exists() or not any(arts.iterdir())


@pytest.mark.parametrize("case", ["not_h5ad", "log_normalised", "no_vocabulary_overlap", "malformed_trrust",
                                  "too_few_cells_for_cssi"])
def test_bad_input_clear_error_and_clean_cache(tmp_path, capsys, case):
    dicts = shared_path("geneformer/dict_gc30M")
    trrust = shared_path("regulatory/trrust_rawdata.human.tsv")
    data = mixology_h5ad(tmp_path / "cells.h5ad", n_cells=10)
    expected = {"not_h5ad": "not a readable AnnData", "log_normalised": "looks normalised or log-transformed",
                "no_vocabulary_overlap": "none of the", "malformed_trrust": "mode 'Activates'",
                "too_few_cells_for_cssi": "10 cells are too few for CSSI"}[case]
    if case == "not_h5ad":
        data = tmp_path / "counts.h5ad"
        data.write_text("this is a csv,not h5ad\n")
    elif case == "log_normalised":
        a = ad.read_h5ad(tmp_path / "cells.h5ad")
        a.X = a.X.log1p()
        a.write_h5ad(data)
    elif case == "no_vocabulary_overlap":
        a = ad.read_h5ad(tmp_path / "cells.h5ad")
        a.var_names = [f"ENSMUSG{i:011d}" for i in range(a.n_vars)]
        a.write_h5ad(data)
    elif case == "malformed_trrust":
        trrust = tmp_path / "trrust.tsv"
        trrust.write_text("TP53\tMDM2\tActivates\t1\n")
    cache = tmp_path / "cache"
    rc = precompute.main(["--cache", str(cache), "--quiet", "--data", str(data), "--model",
                          str(shared_path("geneformer/configs/Geneformer-V1-10M")), "--random-weights",
                          "--dictionaries", str(dicts), "--reference", str(trrust)])
    assert rc == 2
    assert expected in capsys.readouterr().err
    _assert_no_artifacts(cache)
