"""precompute end to end: the embedded default (both model families, small), the real 297-cell dataset with real
gc30M dictionaries, a V1-10M-shaped random Geneformer and real TRRUST, and a tiny scGPT checkpoint in scGPT's own
release layout with the real whole-human vocabulary on the same real cells; resume after completion; bad inputs
leave nothing in the cache."""
from __future__ import annotations

import logging
import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import precompute
from analysis.errors import InputError
from analysis.io.artifacts import read_manifest, sha256_path
from analysis.models.scgpt.checkpoint import read_vocab, save_release
from analysis.scoring.claims import CLAIM_TABLES, claim_map
from app.data import ArtifactStore, RunNotFound
from tests.conftest import SMALL, shared_path, tiny_scgpt_parts


def test_embedded_default_writes_one_complete_run_per_family(embedded_cache):
    cache, runs = embedded_cache
    assert set(runs) == {"geneformer", "scgpt"}
    for family, run_dir in runs.items():
        manifest = json.loads((run_dir / "manifest.json").read_text())
        for rel, meta in manifest["files"].items():
            assert sha256_path(run_dir / rel) == meta["sha256"]
        m = read_manifest(run_dir)
        assert m.family == family and m.config.model.family == family and m.run_id.startswith(f"small-{family}-")
        assert m.model.n_layers == 2 and m.reference_names == ["simulated truth"] and m.readout_layer == 1
        assert m.versions["torch"] and m.inputs["data"] and m.model.readout_labels["mlm_loss"]
        assert m.data.counts_source == "X (no layers['counts'] and no raw.X)"
    assert read_manifest(runs["scgpt"]).tokenizer["mode"] == "panel"
    assert read_manifest(runs["scgpt"]).model.native_embedding == "cls"
    assert read_manifest(runs["geneformer"]).tokenizer["method"] == "geneformer_rank_value"


@pytest.mark.parametrize("family", ["geneformer", "scgpt"])
def test_embedded_run_is_complete(embedded_cache, family):
    cache, runs = embedded_cache
    run_dir = runs[family]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {"head_ranking.parquet", "attention_head_rows.npy", "attention_head_cols.npy", "attention_layer_sums.npy",
            "panel.parquet"} <= set(manifest["files"])
    assert not any("attention_sums" in f or "edges_attention" in f for f in manifest["files"])   # no [L, H, G, G]
    store = ArtifactStore(cache)
    ranking = store.ranking(run_dir.name)
    assert set(ranking["direction"]) == {"tf_to_target", "target_to_tf", "symmetric"}
    assert set(ranking["edge_type"]) == {"attention", "attention_layer_mean", "spearman"}
    auroc = ranking[(ranking["metric"] == "auroc") & (ranking["edge_type"] == "spearman")]["value"]
    assert (auroc > 0.6).all()  # correlation recovers the simulated network: the simulation has signal
    flips = store.table(run_dir.name, "rank_reversal")      # the lead of the best head and layer, per view
    assert len(flips) == 2 * ranking.groupby(["reference", "direction"]).ngroups
    heads = ranking[(ranking["metric"] == "auroc") & (ranking["edge_type"] == "attention")]
    for row in flips[flips["ordering"] == "best head vs second"].itertuples():
        view = heads[(heads["reference"] == row.reference) & (heads["direction"] == row.direction)]
        top = view.sort_values("value", ascending=False, kind="stable").head(2)
        assert [row.first, row.second] == [f"L{r.layer}H{r.head}" for r in top.itertuples()]
        assert row.first_value == pytest.approx(top["value"].iloc[0]) and 0 <= row.p_flip <= 1
    panel = store.panel(run_dir.name)
    tf_rows = np.nonzero(panel["is_tf"].to_numpy())[0]
    assert store.head_scores(run_dir.name, 1, 0, tf_rows, "symmetric").shape == (tf_rows.size, len(panel))


def reg_has_tf_split(reg: pd.DataFrame) -> bool:
    """The grid's one descriptive TF vs non-TF row (registry 18) is in the run's registry."""
    rows = reg[reg["hypothesis"].str.startswith("TF vs non-TF perturbations")]
    assert rows.empty or (rows["paper_tier"].iloc[0] == "descriptive" and rows["paper_entry"].iloc[0] == 18)
    return len(rows) == 1


@pytest.mark.parametrize("family", ["geneformer", "scgpt"])
def test_embedded_run_has_perturbation_and_confound_tables(embedded_cache, family):
    cache, runs = embedded_cache
    store = ArtifactStore(cache)
    run = runs[family].name
    per = store.table(run, "perturbation_auroc")
    assert per["perturbation"].nunique() >= 3
    assert {"attention", "attention_layer_mean", "spearman", "baseline_variance", "baseline_mean",
            "baseline_detection", "baseline_tf_degree"} <= set(per["edge_type"])
    grid = store.table(run, "sensitivity_grid")
    assert grid[["lfc_threshold", "n_control", "universe_size"]].drop_duplicates().shape[0] == 27
    tfs = set(store.reference_edges(run)["tf"])                        # SN6.3's TF vs non-TF split
    groups = {"TF" if p in tfs else "non-TF" for p in per["perturbation"]}
    assert set(grid["perturbations"]) == {"all"} | groups              # the simulation may perturb TFs only
    assert reg_has_tf_split(store.table(run, "statistics_registry")) == (len(groups) == 2)
    direct = store.table(run, "direct_target")                         # registry 35: perturbed TFs' own targets
    assert direct["perturbation"].nunique() >= 2 and set(direct["edge_type"]) == {"attention_layer_mean", "spearman"}
    left = store.table(run, "perturbations_left_out")
    assert list(left.columns) == ["perturbation", "reason"]
    assert store.manifest(run).data.perturbations_left_out == len(left)
    assert not set(left["perturbation"]) & set(per["perturbation"])      # a left-out gene is never scored
    inc = store.table(run, "incremental_value")
    assert set(inc["split"]) == {"perturbation", "gene", "joint"} and set(inc["model"]) == {"logistic", "gbdt"}
    assert {"gene+attention", "gene+correlation", "gene+sim_oracle", "gene+sim_gene_only",
            "gene+correlation_absolute", "gene+correlation_sign_matched"} <= set(inc["feature_set"])
    resid = store.table(run, "residualisation").set_index("model")
    assert (resid.loc["ols", "n_seeds"] == 10).all() and (resid.loc["gbdt", "n_seeds"] == 1).all()   # registry 15
    primary = inc.query("split == 'perturbation' and model == 'logistic' and metric == 'auroc' and "
                        "feature_set == 'gene+attention'").iloc[0]
    assert primary["min_detectable_delta"] > 0                         # registry 26's power analysis
    matched = store.table(run, "incremental_value_matched")
    assert set(matched["split"]) == {"perturbation"} and "gene+attention" in set(matched["feature_set"])
    reg = store.table(run, "statistics_registry")
    assert reg["hypothesis"].str.endswith("on the propensity-matched set").any()
    held_out = store.table(run, "layer_selection")         # nested layer selection (SN14.1)
    on_target = store.table(run, "on_target")
    passed = set(per["perturbation"]) - set(on_target.loc[on_target["status"] == "failed", "perturbation"])
    assert set(held_out["perturbation"]) == passed and held_out["fold"].nunique() == min(5, len(passed))
    assert reg["hypothesis"].str.startswith("nested CV: layer chosen on training folds").sum() == 1
    assert {"reference_recovery", "perturbation_first", "trivial_baselines", "incremental_value", "degree_null",
            "residualisation", "sensitivity_grid", "head_screen"} <= set(reg["analysis"])
    assert reg["test_id"].is_unique and reg.loc[reg["confirmatory"], "q"].notna().all()
    assert set(reg.loc[reg["paper_entry"] == 0, "analysis"]) <= {"sae_regulatory", "universe_check"}  # SN16.2 1-37
    paper = reg["paper_tier"] == "confirmatory"
    assert reg.loc[paper & reg["p"].notna(), "q_paper"].notna().all() and reg.loc[~paper, "q_paper"].isna().all()
    assert (runs[family] / "statistics_registry.csv").is_file()
    abl = store.table(run, "ablation_results")
    assert abl.groupby("family")["draw"].nunique()["random_k"] == 3
    assert {"composite_top_k", "entropy_matched_random_k", "mlp_block"} <= set(abl["family"])
    best = per[per["edge_type"] == "attention_layer_mean"].groupby("layer")["auroc"].mean().idxmax()
    assert set(abl.loc[abl["family"] == "whole_layer", "draw"]) == {best}   # the best perturbation-first layer
    assert {"mlm_loss", "mlm_accuracy", "reference_auroc", "perturbation_auroc",
            "output_cosine_distance"} <= set(abl["readout"])
    # target recall needs a model that predicts gene tokens (Geneformer), not values (scGPT)
    assert ("target_recall_loss" in set(abl["readout"])) == (family == "geneformer")
    fid = store.table(run, "ablation_fidelity")
    # every head intervention moves the hidden states after its layer: no silent no-op
    assert (fid[fid["layer"] == fid["layer"].max()]["hidden_cos_mean"] > 0).all()


@pytest.mark.parametrize("family", ["geneformer", "scgpt"])
def test_embedded_run_has_cssi(embedded_cache, family):
    cache, runs = embedded_cache
    run_dir = runs[family]
    store = ArtifactStore(cache)
    run = run_dir.name
    cssi = store.cssi(run)
    data = store.manifest(run).data        # CSSI stratifies the cells attention ran on: the control cells
    assert data.attention_cell_selection == "control" and 0 < data.attention_cells < 150
    assert len(cssi.cells) == data.attention_cells and cssi.params["representation"] == "embedding"
    assert cssi.params["cell_embedding"] == {"geneformer": "mean_penultimate", "scgpt": "cls"}[family]
    levels = sorted(cssi.strata.levels["n_strata"].unique())   # ~60 control cells may not hold 5 strata of 5
    assert levels in ([2, 3], [2, 3, 5])
    for k in levels:
        assert np.unique(cssi.strata.cell_labels(k)).size == k
    # fine clusters and random groups each partition the cells: their sums are the pooled store of those layers
    layers = list(cssi.params["layers"])
    head_rows, layer_sums = (np.load(run_dir / name)[layers] for name in ("attention_head_rows.npy",
                                                                         "attention_layer_sums.npy"))
    sources = np.load(run_dir / "attention_source_rows.npy")
    grouped, f = cssi.source.grouped, cssi.strata.n_fine
    assert grouped.full_rows and cssi.params["gene_permuted_null"] == "every site"   # a small panel: heads whole
    for part in (slice(0, f), slice(f, None)):
        assert np.allclose(np.asarray(grouped.layer_sums[part]).sum(0), layer_sums, rtol=1e-4, atol=1e-4)
        assert np.allclose(np.asarray(grouped.head_rows[part]).sum(0)[:, :, sources], head_rows, rtol=1e-4,
                           atol=1e-4)
    assert np.array_equal(np.asarray(cssi.source.group_counts[:f]).sum(0), np.load(run_dir / "pair_counts.npy"))
    curve = store.table(run, "cssi_curve")
    n_sites = len(cssi.source.sites)   # 2 layers x 4 heads + 2 layer means + Spearman signed and absolute
    assert n_sites == 12 and len(curve) == len(levels) * n_sites * 4 * 2
    assert (curve["n_found"] == curve["n_strata"]).all() and (curve["null_low"] <= curve["null_high"]).all()
    assert len(store.table(run, "cssi_null")) == len(levels) * n_sites * 4 * 2 * 20
    reg = store.table(run, "statistics_registry")
    tests = reg[reg["analysis"] == "cssi"]
    assert tests["confirmatory"].sum() == 1
    assert "L1 mean CSSI-max at 3 strata" in tests.loc[tests["confirmatory"], "hypothesis"].iloc[0]
    assert "cssi_synthetic" in set(reg["analysis"])
    assert set(store.table(run, "cssi_synthetic")["config"]) == {"Small", "Medium", "Large", "XLarge", "XXLarge",
                                                                 "Massive"}


@pytest.mark.parametrize("family", ["geneformer", "scgpt"])
def test_embedded_run_has_the_biology_scaling_and_bootstrap_analyses(embedded_cache, family):
    """Scaling (nested subsamples of CSSI's 40 random groups), controlled composition on the simulated states, the
    per-TF bootstrap, layer biology with the co-regulation pairs, the SN14.9 check, their registry entries, and a
    claim map that reads them."""
    cache, runs = embedded_cache
    store = ArtifactStore(cache)
    run = runs[family].name
    m = store.manifest(run)
    curve = store.table(run, "scaling_curve")
    assert sorted(curve["n_units"].unique()) == [4, 10, 20, 40] and curve["seed"].nunique() == 5
    assert {"auroc", "f1", "f1_at_20", "f1_at_50", "f1_at_100"} <= set(curve["metric"])
    full = curve[curve["n_units"] == 40]
    assert (full["n_cells"] == m.data.attention_cells).all()          # every group: every attention cell
    assert full.groupby(["label", "metric"])["value"].nunique().eq(1).all()   # the same cells for every seed
    readout = full.query("label == 'L1 mean' and metric == 'auroc'")["value"].iloc[0]
    ranking = store.ranking(run).query("edge_type == 'attention_layer_mean' and layer == 1 and metric == 'auroc' "
                                       "and direction == 'tf_to_target'")
    assert readout == pytest.approx(ranking["value"].iloc[0], abs=1e-3)   # all groups = the pooled store (float32 sums)
    agree = store.table(run, "scaling_agreement").query("label == 'L1 mean'").set_index("n_units")
    assert agree.loc[40, "jaccard_mean"] == 1 and (agree["n_pairs"] == 10).all()   # 5 seeds; all groups agree
    assert "f1_per_source_100" in set(curve["metric"])
    boot = store.table(run, "scaling_bootstrap")
    assert (boot["ci_low"] <= boot["ci_high"]).all() and set(boot["n_units"]) == {4, 10, 20, 40}
    comp = store.table(run, "composition_curve")
    assert set(comp["condition"]) == {"single_state", "fixed_mixture", "heterogeneity"}
    assert (comp["states_from"] == "cell-state column").all() and set(comp.query(
        "condition == 'heterogeneity'")["n_states"]) == {1, 2, 3, 4}
    tfb = store.table(run, "tf_bootstrap")
    assert set(tfb["label"]) == {"L1 mean", "Spearman"} and "(all TFs)" in set(tfb["tf"])
    biology = store.table(run, "layer_biology")
    assert set(biology["reference"]) == {"simulated truth", "simulated truth co-regulation"}
    assert set(biology.query("edge_type == 'attention_layer_mean'")["layer"]) == {0, 1}
    check = store.table(run, "universe_check")
    sizes = check.groupby("protocol")["n_genes"].first()
    universe = store.panel(run).query("in_universe")
    assert sizes["run"] == len(universe)
    assert sizes["hvg_only"] == len(universe) - universe["is_perturbed"].sum()
    reg = store.table(run, "statistics_registry")
    assert {"scaling", "controlled_composition", "tf_bootstrap", "layer_biology", "attention_expression",
            "universe_check"} <= set(reg["analysis"])
    claims = claim_map(reg, {t: store.table(run, t) for t in CLAIM_TABLES if store.has_table(run, t)},
                       n_heads=m.model.n_layers * m.model.n_heads)
    assert claims["claim"].nunique() == 8 and set(claims["verdict"]) <= {"supported", "not supported",
                                                                           "not testable"}
    layers = claims.query("claim == 'layer_organisation'")
    assert (layers["verdict"] == "not testable").all()          # two layers: no depth trend can be tested


@pytest.mark.parametrize("family", ["geneformer", "scgpt"])
def test_embedded_run_has_saes_of_the_residual_stream(embedded_cache, family, tmp_path):
    """The SAE stage (on for the embedded models): one TopK SAE per layer, trained on the residual stream at every
    gene position of the attention cells; its weights reproduce the latents stored for every row and the fraction of
    variance explained recorded for the layer, computed here from activations captured again; the dense activations
    are gone from the run."""
    import torch

    from analysis.interp.residual import capture_residual_stream
    from analysis.interp.sae import load_sae
    from analysis.io import files
    from analysis.rerun import RunContext

    cache, runs = embedded_cache
    store = ArtifactStore(cache)
    run_dir, run = runs[family], runs[family].name
    m = store.manifest(run)
    layers = store.table(run, "sae_layers").set_index("layer")
    assert list(layers.index) == [0, 1] and (layers["n_cells"] == m.data.attention_cells).all()
    assert (layers["n_features"] == 8 * 32).all() and (layers["k"] == 8).all()
    assert (layers["fraction_variance_explained"] > 0.3).all()
    assert (layers["behaviour_loss"] > 0).all() and np.isfinite(layers["behaviour_delta"]).all()
    assert (layers["svd_directions"] >= 1).all() and (layers["n_svd_visible"] <= layers["n_features"]).all()
    features = store.table(run, "sae_features")
    assert len(features) == 2 * 256 and set(features["layer"]) == {0, 1}
    assert features.loc[~features["dead"], "top_genes"].str.len().gt(0).all()
    assert not (run_dir / "sae_activations").exists()
    programmes = store.table(run, "sae_programmes")     # cell states and regulon activities vs per-cell features
    for layer in (0, 1):
        at = programmes[programmes["layer"] == layer]
        assert set(at["kind"]) == {"cell_state", "tf_activity"} and at["r"].notna().all()
        assert at["null_r"].notna().all() == (layer == m.readout_layer)   # the shuffled-activation SAE: read-out
        assert (at["n_cells"] == m.data.attention_cells).all() and at["best_feature"].between(0, 255).all()
    rows = np.load(run_dir / files.SAE_ROWS)
    context = RunContext.from_manifest(m, store.panel(run))
    again = capture_residual_stream(context.adapter, context.attention_tokens, (0, 1), tmp_path / "act")
    assert again.n_rows == rows["row_cell"].size == layers.loc[0, "n_rows"]
    assert np.array_equal(again.row_cell, rows["row_cell"]) and np.array_equal(again.row_gene, rows["row_gene"])
    for layer in (0, 1):
        sae = load_sae(run_dir / files.sae_weights(layer))
        x = torch.from_numpy(np.array(again.layer(layer)))
        with torch.no_grad():
            indices, values = sae.active(x)
            x_hat = sae(x)[0]
        stored = np.load(run_dir / files.sae_latents(layer))
        agree = (np.sort(indices.numpy(), axis=1) == np.sort(stored["indices"], axis=1)).all(axis=1).mean()
        assert agree > 0.99                          # same rows, same features (ties of float noise aside)
        fve = 1 - ((x - x_hat) ** 2).sum().item() / ((x - x.mean(0)) ** 2).sum().item()
        assert fve == pytest.approx(layers.loc[layer, "fraction_variance_explained"], abs=0.01)


@pytest.mark.parametrize("family", ["geneformer", "scgpt"])
def test_embedded_run_has_the_regulatory_test_and_coactivation_modules(embedded_cache, family):
    """The CRISPRi regulatory test covers knocked-down reference TFs on every layer, with the perturbed cells the
    test size has (3 to 15 per TF: too few for its power, which the unit test's planted case and the default run's
    numbers in the closing note show), each (layer, TF) test in the statistics registry, descriptive. Co-activation
    modules: each module's features are joined by recorded edges, whose r equals numpy's corrcoef of the stored
    latents. Causal specificity is measured below the last layer only (at the last it is structural)."""
    from analysis.io import files

    cache, runs = embedded_cache
    store = ArtifactStore(cache)
    run = runs[family].name
    table = store.table(run, "sae_regulatory")
    edges = store.table(run, "reference_edges")
    knocked = {str(p) for p in store.table(run, "de_groups")["perturbation"]}
    tfs = set(edges["tf"]) & knocked
    assert set(table["tf"]) <= tfs and len(set(table["tf"])) >= 3
    assert set(table["layer"]) == {0, 1} and table.groupby("layer")["tf"].nunique().nunique() == 1
    assert (table["p"] >= 1 / 201).all() and table["n_responding"].eq(10).all()
    assert table["n_perturbed"].between(3, 50).all() and table["n_control"].eq(50).all()
    assert (table["passes"] == (table["q"] < 0.05)).all() and (table["rotated_tf"] != table["tf"]).all()
    registry = store.table(run, "statistics_registry")
    assert (registry["analysis"] == "sae_regulatory").sum() == len(table)
    assert not registry.loc[registry["analysis"] == "sae_regulatory", "confirmatory"].any()

    features = store.table(run, "sae_features")
    coactivation = store.table(run, "sae_coactivation")
    layers = store.table(run, "sae_layers").set_index("layer")
    assert layers.loc[0, "causal_specificity"] > 0 and layers.loc[0, "specificity_features"] == 8
    assert np.isnan(layers.loc[1, "causal_specificity"]) and layers.loc[1, "specificity_features"] == 0   # last layer
    for layer in (0, 1):
        here = features[features["layer"] == layer]
        assert layers.loc[layer, "n_modules"] == here["module"].max() + 1
        with np.load(runs[family] / files.sae_latents(layer)) as lat:
            dense = np.zeros((lat["indices"].shape[0], 256))
            np.put_along_axis(dense, lat["indices"].astype(np.int64), lat["values"], axis=1)
        e = coactivation[coactivation["layer"] == layer]
        for a, b, r in e[["a", "b", "r"]].head(20).itertuples(index=False):
            assert r == pytest.approx(np.corrcoef(dense[:, a], dense[:, b])[0, 1], rel=1e-6) and r >= 0.3
        joined = set(e["a"]) | set(e["b"])
        assert set(here.loc[here["module"] >= 0, "feature"]) <= joined
        assert here.loc[here["feature"].isin(joined), "module_x"].notna().all()


def test_rerun_reuses_finished_stages(embedded_cache):
    cache, runs = embedded_cache
    run_dir = runs["geneformer"]
    before = (run_dir / "attention_head_rows.npy").stat().st_mtime_ns
    scgpt_before = (runs["scgpt"] / "manifest.json").stat().st_mtime_ns
    # simulate a killed run: the complete run becomes a partial one, then precompute resumes it
    partial = run_dir.with_name(run_dir.name + ".partial")
    run_dir.rename(partial)
    (partial / "manifest.json").unlink()
    assert precompute.main(["--cache", str(cache), *SMALL, "--model-family", "geneformer"]) == 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    skipped = {t["stage"]: t["skipped"] for t in manifest["stage_timings"]}
    assert skipped["attention"] and skipped["ablation"] and skipped["cssi"]
    assert (run_dir / "attention_head_rows.npy").stat().st_mtime_ns == before
    assert not partial.exists()
    assert (runs["scgpt"] / "manifest.json").stat().st_mtime_ns == scgpt_before   # the other family untouched


STRING = "regulatory/string_v12_ppi_subset_208immune_genes.tsv"


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
                          "--counts-layer", "X",
                          "--gene-sets", str(shared_path("genesets/h.all.v2025.1.Hs.symbols.gmt")),
                          "--set", "sae.run=on", "--set", "sae.layers=5", "--set", "sae.epochs=1",
                          "--n-null", "20", "--name", "mixology", "--set", "ablation.n_cells=2", "--set",
                          "ablation.ks=1", "--set", "ablation.n_random=1", *CSSI_24_CELLS, "--set",
                          f"biology.pair_references=string:{shared_path(STRING)}", "--set",
                          "biology.string_min_score=0.4"])
    assert rc == 0
    (run_dir,) = (cache / "artifacts").iterdir()
    m = read_manifest(run_dir)
    assert m.family == "geneformer" and (m.model.n_layers, m.model.n_heads, m.model.max_len) == (6, 4, 2048)
    assert m.data.n_cells == 24 and m.model.random_init and m.data.counts_source == "X (--counts-layer X)"
    ranking = pd.read_parquet(run_dir / "head_ranking.parquet")
    heads = ranking[(ranking["edge_type"] == "attention") & (ranking["metric"] == "auroc")]
    assert len(heads) == 6 * 4 * 3 and heads["n_pos"].iloc[0] > 0
    assert set(ranking["reference"]) == {"TRRUST"}
    ablation = pd.read_parquet(run_dir / "ablation_results.parquet")
    assert {"top_k", "bottom_k", "random_k", "uniform_top_k", "whole_layer", "mlp_layer"} <= set(ablation["family"])
    assert "perturbation_auroc" not in set(ablation["readout"])  # no perturbation column in this dataset
    # atlas data still gets the reference-side confounds (issue: residualisation and the degree null)
    resid = pd.read_parquet(run_dir / "residualisation.parquet")
    assert set(resid["edge"]) == {"attention", "correlation", "correlation_absolute"} and set(resid["model"]) == {
        "ols", "gbdt"}
    degree = pd.read_parquet(run_dir / "degree_null.parquet").set_index("edge")
    assert np.allclose(degree["chance"] + degree["degree"] + degree["excess"], degree["auroc"])
    per_tf = pd.read_parquet(run_dir / "degree_null_per_tf.parquet")         # registry 16's per-TF rows
    assert set(per_tf["edge"]) == set(degree.index) and per_tf["tf"].isin(set(pd.read_parquet(
        run_dir / "reference_edges.parquet")["tf"])).all()
    assert np.allclose(per_tf["auroc"] - per_tf["degree_null_mean"], per_tf["excess"])
    assert not (run_dir / "incremental_value.parquet").exists()
    cells = pd.read_parquet(run_dir / "cssi_cells.parquet")
    assert len(cells) == 24 and cells["cell_state"].str.len().gt(0).all()   # the real cell-line labels
    curve = pd.read_parquet(run_dir / "cssi_curve.parquet")
    assert set(curve["reference"]) == {"TRRUST"} and set(curve["n_strata"]) == {2, 3}
    assert curve.loc[curve["edge_type"] == "attention", "layer"].nunique() == 6
    # SN17 on real genes: the real STRING subset (score >= 0.4) and TRRUST as pairs, every layer, depth trends
    biology = pd.read_parquet(run_dir / "layer_biology.parquet")
    hallmark = "h.all.v2025.1.Hs.symbols gene sets"                  # --gene-sets, beside the --set STRING
    assert set(biology["reference"]) == {"STRING>=400", "TRRUST", hallmark}
    assert biology.query("reference == @hallmark")["n_pos"].iloc[0] > 0
    assert biology.groupby("reference")["layer"].nunique().eq(7).all()          # 6 layers + the Spearman rows (-1)
    assert biology.query("reference == 'STRING>=400'")["n_pos"].iloc[0] > 0
    reg = pd.read_parquet(run_dir / "statistics_registry.parquet")
    assert {"STRING>=400 recovery trends with depth", "TRRUST recovery trends with depth",
            "STRING>=400 and TRRUST layer profiles correlate"} <= set(reg["hypothesis"])
    # the same gene sets annotate the SAE's features: each Hallmark set with 3+ of its genes, by its own name
    members = pd.read_parquet(run_dir / "gene_set_members.parquet")
    assert set(members["collection"]) == {hallmark} and members.groupby("gene_set").size().min() >= 3
    enrichment = ArtifactStore(cache).sae_enrichment(run_dir.name, 5, 20)
    tested = set(enrichment["gene_set"])
    assert {f"{hallmark}: {name}" for name in members["gene_set"]} <= tested
    assert not any(name.startswith(f"{hallmark}: neighbours of") for name in tested)


@pytest.fixture(scope="module")
def tiny_scgpt_release(tmp_path_factory):
    """A tiny random scGPT (2 layers x 4 heads, d 32) over the real 60,697-token whole-human vocabulary, saved in
    scGPT's release layout: args.json, vocab.json, best_model.pt."""
    vocab = read_vocab(shared_path("scgpt/vocab_whole_human_60697.json"))
    symbols = [s for s, _ in sorted(vocab.items(), key=lambda kv: kv[1])][:-3]
    model, args, built = tiny_scgpt_parts(symbols, seed=2)
    directory = tmp_path_factory.mktemp("scGPT_tiny")
    save_release(model, args, built, directory)
    return directory


def test_real_dataset_tiny_scgpt_release_real_vocab_real_trrust(tmp_path, tiny_scgpt_release):
    """All 297 real cells, Ensembl ids mapped to the real vocabulary through gc104M's symbol table, panel mode; every
    stage that applies (no perturbation column here) runs, ablation with fidelity included."""
    data = mixology_h5ad(tmp_path / "mixology.h5ad")
    cache = tmp_path / "cache"
    rc = precompute.main(["--cache", str(cache), "--quiet", "--data", str(data), "--model", str(tiny_scgpt_release),
                          "--dictionaries", str(shared_path("geneformer/dict_gc104M")),
                          "--reference", str(shared_path("regulatory/trrust_rawdata.human.tsv")),
                          "--cell-state-col", "cell_line_demuxlet", "--panel-size", "150", "--n-null", "20",
                          "--name", "mixology", "--set", "ablation.n_cells=6", "--set", "ablation.ks=1,3",
                          "--set", "ablation.n_random=1", "--set", "cssi.n_strata=2,3,5", "--set",
                          "cssi.primary_n_strata=5", "--set", "cssi.n_null=10", "--set", "cssi.n_gene_null=3",
                          "--set", "cssi.synthetic_seeds=0"])
    assert rc == 0
    (run_dir,) = (cache / "artifacts").iterdir()
    m = read_manifest(run_dir)
    assert m.family == "scgpt" and run_dir.name.startswith("mixology-scgpt-")
    assert (m.model.n_layers, m.model.n_heads, m.model.max_len) == (2, 4, 1200) and not m.model.random_init
    assert m.inputs["model_sha256"] == sha256_path(tiny_scgpt_release / "best_model.pt")
    assert m.data.n_cells == 297 and m.data.n_vocab_genes > 13_000
    assert m.tokenizer["mode"] == "panel" and m.tokenizer["cls_value"] == -2 and m.tokenizer["n_bins"] == 51
    assert m.config.tokenizer.seed == m.seeds["tokenizer"]
    panel = pd.read_parquet(run_dir / "panel.parquet")
    counts = np.load(run_dir / "pair_counts.npy")
    assert len(panel) == 150 and (counts == 297).all()   # every panel pair in every cell's input
    ranking = pd.read_parquet(run_dir / "head_ranking.parquet")
    heads = ranking[(ranking["edge_type"] == "attention") & (ranking["metric"] == "auroc")]
    assert len(heads) == 2 * 4 * 3 and heads["n_pos"].iloc[0] > 0 and set(ranking["reference"]) == {"TRRUST"}
    ablation = pd.read_parquet(run_dir / "ablation_results.parquet")
    assert {"top_k", "bottom_k", "random_k", "uniform_top_k", "whole_layer", "mlp_layer"} <= set(ablation["family"])
    assert "target_recall_loss" not in set(ablation["readout"])
    loss = ablation[ablation["readout"] == "mlm_loss"]
    assert (loss["baseline"] > 0).all() and (loss["delta"] != 0).any()
    fidelity = pd.read_parquet(run_dir / "ablation_fidelity.parquet")
    assert (fidelity[fidelity["layer"] == 2]["hidden_cos_mean"] > 0).all()
    cells = pd.read_parquet(run_dir / "cssi_cells.parquet")
    assert len(cells) == 297 and json.loads((run_dir / "cssi_params.json").read_text())["cell_embedding"] == "cls"
    assert set(pd.read_parquet(run_dir / "cssi_curve.parquet")["n_strata"]) == {2, 3, 5}


CSSI_24_CELLS = ["--set", "cssi.n_neighbors=5", "--set", "cssi.min_size=2", "--set", "cssi.n_fine=6", "--set",
                 "cssi.n_random_groups=4", "--set", "cssi.n_strata=2,3", "--set", "cssi.primary_n_strata=2",
                 "--set", "cssi.n_null=10", "--set", "cssi.n_gene_null=3", "--set", "cssi.synthetic_seeds=0"]


def _assert_no_artifacts(cache):
    arts = cache / "artifacts"
    assert not arts.exists() or not any(arts.iterdir())


@pytest.mark.parametrize("case", ["not_h5ad", "log_normalised", "nan_counts", "no_vocabulary_overlap",
                                  "malformed_trrust", "too_few_cells_for_cssi", "dictionaries_of_another_model",
                                  "gpt2_config", "scgpt_missing_key", "scgpt_no_symbol_table",
                                  "scgpt_panel_shorter_than_universe", "perturbations_too_small"])
def test_bad_input_clear_error_and_clean_cache(tmp_path, capsys, case, tiny_scgpt_release):
    dicts = shared_path("geneformer/dict_gc30M")
    trrust = shared_path("regulatory/trrust_rawdata.human.tsv")
    model = shared_path("geneformer/configs/Geneformer-V1-10M")
    data = mixology_h5ad(tmp_path / "cells.h5ad", n_cells=10)
    expected = {"not_h5ad": "not a readable AnnData", "log_normalised": "looks normalised or log-transformed",
                "nan_counts": "NaN or infinite value(s) in 1 cell(s)",
                "no_vocabulary_overlap": "none of the", "malformed_trrust": "mode 'Activates'",
                "too_few_cells_for_cssi": "10 cells are too few for CSSI",
                "dictionaries_of_another_model": "these dictionaries belong to another model",
                "gpt2_config": "model_type 'gpt2': not a Geneformer checkpoint",
                "scgpt_missing_key": "lacks 1 key(s) of the scGPT model, first 'transformer_encoder.layers.0.self_attn.Wqkv.weight'",
                "scgpt_no_symbol_table": "genes matches the scGPT vocabulary",
                "scgpt_panel_shorter_than_universe": "fewer than the 1500-gene evaluation universe: use --set "
                                                     "tokenizer.mode=zero_shot",
                "perturbations_too_small": "no perturbation in column 'gene' has 3 or more cells (the largest, "
                                           "'TP53', has 2)"}[case]
    extra = []
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
    elif case == "nan_counts":
        a = ad.read_h5ad(tmp_path / "cells.h5ad")
        x = a.X.tolil()
        x[3, :5] = np.nan
        a.X = x.tocsr()
        a.write_h5ad(data)
    elif case == "perturbations_too_small":     # two knock-downs of 2 cells and 1 cell: no DE test possible
        a = ad.read_h5ad(tmp_path / "cells.h5ad")
        a.obs["gene"] = ["TP53", "TP53", "MYC"] + ["non-targeting"] * (a.n_obs - 3)
        a.write_h5ad(data)
        extra = ["--perturbation-col", "gene", "--control-label", "non-targeting"]
    elif case == "malformed_trrust":
        trrust = tmp_path / "trrust.tsv"
        trrust.write_text("TP53\tMDM2\tActivates\t1\n")
    elif case == "dictionaries_of_another_model":
        dicts = shared_path("geneformer/dict_gc104M")
    elif case == "gpt2_config":
        model = tmp_path / "gpt2"
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 12}))
    elif case == "scgpt_panel_shorter_than_universe":     # the paper's 2,000 HVGs in a 1,200-token input
        model, dicts = tiny_scgpt_release, shared_path("geneformer/dict_gc104M")
        extra = ["--panel-size", "3000", "--set", "perturbation.universe=hvg", "--set",
                 "perturbation.universe_size=1500"]
    elif case.startswith("scgpt"):
        model = tmp_path / "scgpt"
        import shutil
        import torch

        shutil.copytree(tiny_scgpt_release, model)
        if case == "scgpt_missing_key":
            state = torch.load(model / "best_model.pt", weights_only=True)
            del state["transformer_encoder.layers.0.self_attn.Wqkv.weight"]
            torch.save(state, model / "best_model.pt")
        dicts = tmp_path / "no_tables"   # no gene_name_id_dict: Ensembl ids cannot be matched to symbols
        dicts.mkdir()
    cache = tmp_path / "cache"
    weights = [] if case.startswith("scgpt") else ["--random-weights"]
    rc = precompute.main(["--cache", str(cache), "--quiet", "--data", str(data), "--model", str(model), *weights,
                          "--dictionaries", str(dicts), "--reference", str(trrust), *extra])
    assert rc == 2
    assert expected in capsys.readouterr().err
    _assert_no_artifacts(cache)


def test_single_perturbation_screen_and_concurrent_identical_precomputes(tmp_path):
    """Two identical precomputes of a one-perturbation screen started together into one cache: the second waits for
    the first (dataset, model, run) and reuses its run; both exit 0 with one complete run and nothing half-written.
    The screen runs what it can (the gene split of incremental value) and says what it skipped."""
    import subprocess
    import sys
    cache = tmp_path / "cache"
    args = [sys.executable, "precompute.py", "--cache", str(cache), "--model-family", "geneformer", "--set",
            "simulation.n_cells=150", "--set", "simulation.n_perturbed=1", "--set", "train.epochs=1", "--set",
            "train.hidden_size=32", "--set", "train.n_layers=2", "--set", "ranking.n_null=10", "--set",
            "ablation.n_cells=10", "--set", "ablation.ks=1", "--set", "cssi.n_fine=0", "--set",
            "perturbation.n_boot=20", "--set", "perturbation.n_degree_null=5", "--name", "one"]
    root = Path(precompute.__file__).parent
    procs = [subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert sum("waiting for it to finish" in log for log in logs) >= 1
    assert sum("reusing it" in log for log in logs) == 1
    (run_dir,) = (cache / "artifacts").iterdir()
    assert not list(cache.rglob("*.partial")) and not list(cache.rglob("*.tmp"))
    inc = pd.read_parquet(run_dir / "incremental_value.parquet")
    assert set(inc["split"]) == {"gene"}
    assert not (run_dir / "incremental_value_matched.parquet").exists()
    assert any("split(s) perturbation, joint skipped" in log for log in logs)


def test_a_run_over_its_memory_limit_stops_before_writing(embedded_cache, capsys, caplog):
    """The plan is made before any stage: under a limit no stage fits, precompute names the first stage over it and
    the setting that lowers it, exits 2 and leaves the cache's runs as they were; ``--plan`` prints every stage's
    estimate and writes no run either."""
    cache, _ = embedded_cache
    before = sorted(p.name for p in (cache / "artifacts").iterdir())
    args = ["--cache", str(cache), *SMALL, "--model-family", "geneformer", "--set", "ranking.n_null=31"]
    assert precompute.main([*args, "--memory-limit", "64MiB"]) == 2
    err = capsys.readouterr().err
    assert "the attention stage would need about" in err and "extraction.batch_size" in err
    assert "0.1 GiB this process may use" in err and "Nothing was written" in err
    caplog.set_level(logging.INFO, logger="precompute")
    assert precompute.main([*args, "--plan"]) == 0
    assert sorted(p.name for p in (cache / "artifacts").iterdir()) == before
    plan = {line.split()[0]: line for record in caplog.records for line in record.getMessage().splitlines()
            if line.startswith("  ")}
    assert " min " in plan["ranking"] and "sources x" in plan["ranking"]          # ranking timed, not left out
    assert " min " in plan["biology"] and "per further layer" in plan["biology"]
    assert "not estimated below 800,000 observations" in plan["perturbation"]          # the probe would cost more
    assert "not estimated below 200,000 pairs" in plan["confounds"]
    assert "scoring not estimated below 200,000 pairs" in plan["cssi"] and " min and more " in plan["cssi"]
    assert "not estimated below 200,000 pairs" in plan["scaling"]
    assert "plain forwards" in plan["ablation"] and "plain forward's" in next(
        record.getMessage() for record in caplog.records if record.getMessage().startswith("plan (calibrated"))


def small_settings() -> dict[str, str]:
    """SMALL's ``--set`` settings as a config's overrides (key -> value)."""
    return dict(SMALL[i + 1].split("=", 1) for i, flag in enumerate(SMALL) if flag == "--set")


def test_the_plan_finds_the_largest_extraction_batch_under_a_limit(embedded_cache):
    """With a forward of 1 GiB per cell (a hand-made calibration), a limit 0.5 GiB above the attention stage's
    estimate at batch 3 is met by batch 3 and by nothing larger; the error names it."""
    from analysis.config import load_config
    from analysis.stages import plan
    from analysis.stages.calibration import Calibration
    from analysis.stages.inputs import resolve_inputs

    cache, _ = embedded_cache
    inp = resolve_inputs(load_config(None, {**small_settings(), "model.family": "geneformer", "ablation.n_cells": "0",
                                            "cssi.n_fine": "0"}), cache, progress=False)   # the forward's stages
    gib = 2 ** 30
    cal = Calibration(seconds=1.0, forward_bytes=gib, per_cell_bytes=gib, base_bytes=0, length=100)
    at_8 = {row.stage: row.memory for row in plan.estimate(inp, cal)}
    limit = at_8["attention"] - 5 * gib + gib // 2                       # batch 3's forward is 5 GiB less than 8's
    assert plan.largest_fitting_batch(inp, cal, limit) == 3
    with pytest.raises(InputError, match=r"extraction.batch_size=3 fits"):
        plan.check(plan.estimate(inp, cal), limit, 3)
    assert plan.largest_fitting_batch(inp, cal, limit - 3 * gib) is None          # not even one cell fits


def test_the_cssi_probe_scores_shares_of_the_panel_laid_out_as_the_run_will_be(embedded_cache):
    """CSSI's scoring and the scaling stage are timed on panels of a share of the genes, whose grouped sums have the
    layout the run will keep (here every gene's per-head rows of every layer); both times are extended along the
    candidate pairs from the two shares."""
    from analysis.config import load_config
    from analysis.io.expression import expression_matrix
    from analysis.scoring import cssi_levels
    from analysis.stages import cssi_probe
    from analysis.stages.calibration import co_observed
    from analysis.stages.inputs import resolve_inputs

    cache, _ = embedded_cache
    inp = resolve_inputs(load_config(None, {**small_settings(), "model.family": "scgpt"}), cache, progress=False)
    c, cells, g = inp.cfg.cssi, inp.attention_cell_data, len(inp.panel)
    layout = cssi_levels.choose_layout(c, inp.adapter.n_layers, inp.adapter.n_heads, inp.panel, inp.readout_layer,
                                       cells.n_cells)
    strata, random_group = cssi_levels.build_strata(c, expression_matrix(cells, inp.panel["gene_id"].to_numpy()),
                                                    cells.n_cells)
    observed = co_observed(inp)
    run, sub = cssi_probe.probe_run(inp, 0.25, layout, strata, random_group, observed)
    n = round(0.25 * g)
    assert len(sub) == n and sub["symbol"].tolist() == inp.panel["symbol"].iloc[
        np.linspace(0, g - 1, n).round().astype(int)].tolist()
    grouped = run.source.grouped
    assert layout.sources.size == g and grouped.full_rows                       # every gene's rows, as the run's
    assert grouped.head_rows.shape == (strata.n_fine + c.n_random_groups, len(layout.layers), inp.adapter.n_heads,
                                       n, n)
    assert grouped.layers == tuple(layout.layers) and run.source.expression.shape == (cells.n_cells, n)
    curve, _ = cssi_levels.evaluate_grid(run, sub, inp.references, c, progress=False)
    assert not curve.empty
    assert cssi_probe.extend([1.0, 2.0], [100, 300], 1000) == pytest.approx(5.5)       # along the pairs
    assert cssi_probe.extend([2.0, 1.0], [100, 300], 1000) == 2.0 and cssi_probe.extend([1.0, 3.0], [5, 5], 9) == 3.0
    assert 0 < cssi_probe.candidate_pairs(sub, inp.references, observed[np.ix_(*[np.linspace(
        0, g - 1, n).round().astype(int)] * 2)]) < cssi_probe.candidate_pairs(inp.panel, inp.references, observed)
    levels, scaled = cssi_probe.cssi_rates(inp, observed, cache)
    assert levels > 0 and scaled is not None and scaled > 0


def test_memory_sizes_parse_as_a_user_writes_them():
    import argparse

    assert precompute.parse_size("12GiB") == 12 * 2 ** 30
    assert precompute.parse_size("800M") == 800 * 2 ** 20
    assert precompute.parse_size("1.5g") == int(1.5 * 2 ** 30)
    assert precompute.parse_size("4096") == 4096
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        precompute.parse_size("twelve gigs")


def test_a_run_holding_a_symlink_is_neither_listed_nor_opened(embedded_cache, tmp_path):
    """A file of a run replaced by a link (to a file outside the cache) is not followed: the run is skipped in the
    listing with the reason, and opening it by id is refused naming the link (qa/bad-inputs.md, Security)."""
    cache, runs = embedded_cache
    source = runs["scgpt"]
    copy = tmp_path / "cache"
    shutil.copytree(source, copy / "artifacts" / source.name)
    run_dir = copy / "artifacts" / source.name
    secret = tmp_path / "secret.txt"
    secret.write_text("not the app's to read")
    (run_dir / "panel.parquet").unlink()
    (run_dir / "panel.parquet").symlink_to(secret)
    store = ArtifactStore(copy)
    runs_listed, skipped = store.runs()
    assert not runs_listed and any("symbolic links (panel.parquet)" in line for line in skipped)
    with pytest.raises(RunNotFound, match="symbolic links"):
        store.panel(source.name)


def test_the_paper_protocols_t_tests_are_registered_with_the_wilcoxon_beside_them(embedded_cache, tmp_path):
    """Under ``perturbation.location_test=ttest`` (every paper protocol's), per-perturbation AUROC > 0.5 is a one-sided
    one-sample t-test (registry 14) and attention and the baselines against correlation paired t-tests (21, 23),
    confirmatory, each p equal to scipy's on the run's own per-perturbation table; the Wilcoxon stands beside each,
    descriptive; the sensitivity grid's p column is the t-test's (18)."""
    from scipy.stats import ttest_1samp, ttest_rel

    cache, _ = embedded_cache
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy, ignore=shutil.ignore_patterns("artifacts", "locks"))
    args = ["--cache", str(copy), *SMALL, "--model-family", "geneformer", "--set", "perturbation.location_test=ttest",
            "--set", "ablation.n_cells=0", "--set", "cssi.n_fine=0", "--set", "sae.run=off"]
    assert precompute.main(args) == 0
    (run_dir,) = (copy / "artifacts").iterdir()
    reg = pd.read_parquet(run_dir / "statistics_registry.parquet").set_index(["analysis", "hypothesis"])
    per = pd.read_parquet(run_dir / "perturbation_auroc.parquet")
    failed = set(pd.read_parquet(run_dir / "on_target.parquet").query("status == 'failed'")["perturbation"])
    per = per[~per["perturbation"].isin(failed)]
    readout = read_manifest(run_dir).readout_layer

    def aurocs(edge_type, layer=-1):
        sel = per[(per["edge_type"] == edge_type) & (per["layer"] == layer) & (per["head"] == -1)]
        return sel.sort_values("perturbation")["auroc"].to_numpy()

    att, cor = aurocs("attention_layer_mean", readout), aurocs("spearman")
    one = reg.loc[("perturbation_first", f"attention L{readout} AUROC > 0.5")]
    assert one["test"] == "t-test (one-sided)" and bool(one["confirmatory"])
    assert np.isclose(one["p"], ttest_1samp(att, 0.5, alternative="greater").pvalue, rtol=1e-10)
    pair = reg.loc[("perturbation_first", f"attention L{readout} vs correlation")]
    assert pair["test"] == "t-test (paired)" and bool(pair["confirmatory"])
    assert np.isclose(pair["p"], ttest_rel(att, cor).pvalue, rtol=1e-10)
    base = reg.loc[("trivial_baselines", "baseline_variance vs correlation")]
    assert np.isclose(base["p"], ttest_rel(aurocs("baseline_variance"), cor).pvalue, rtol=1e-10)
    beside = reg.loc[("perturbation_first",
                      f"attention L{readout} vs correlation (Wilcoxon, beside the paper's t-test)")]
    assert beside["test"] == "Wilcoxon signed-rank (paired)" and not bool(beside["confirmatory"])
    grid_tests = reg.loc["sensitivity_grid"]
    primary = grid_tests[~grid_tests.index.str.contains("beside")]
    assert len(primary) and (primary["test"] == "t-test (one-sided)").all()
    assert len(grid_tests) == 2 * len(primary)                    # each with its Wilcoxon
    grid = pd.read_parquet(run_dir / "sensitivity_grid.parquet")
    spearman = grid[(grid["edge_type"] == "spearman") & (grid["perturbations"] == "all")]
    assert np.allclose(np.sort(spearman["p"].dropna()), np.sort(primary["p"].dropna()))


def test_runs_the_app_cannot_open_are_skipped_with_the_reason_and_the_rest_listed(embedded_cache, tmp_path):
    """A manifest with a number where the finish time belongs (it took every page down), a directory name that is
    not a run id, and a directory renamed from the run its manifest names are each skipped, saying why; the intact
    run is still listed and opens."""
    cache, runs = embedded_cache
    source = runs["scgpt"]
    artifacts = tmp_path / "cache" / "artifacts"
    shutil.copytree(source, artifacts / source.name)
    for name in ("numeric-finish", "bad name", "renamed-run"):          # listing reads only the manifest
        (artifacts / name).mkdir()
        shutil.copy(source / "manifest.json", artifacts / name / "manifest.json")
    manifest = json.loads((artifacts / "numeric-finish" / "manifest.json").read_text())
    (artifacts / "numeric-finish" / "manifest.json").write_text(json.dumps({**manifest, "run_id": "numeric-finish",
                                                                            "finished": 12345}))
    listed, skipped = ArtifactStore(tmp_path / "cache").runs()
    assert [m.run_id for m in listed] == [source.name]
    reasons = dict(line.split(": ", 1) for line in skipped)
    assert "finished is a int (12345), expected str" in reasons["numeric-finish"]
    assert "not a run id" in reasons["'bad name'"]
    assert f"its manifest names run {source.name!r}" in reasons["renamed-run"]
    assert ArtifactStore(tmp_path / "cache").manifest(source.name).run_id == source.name


def test_an_on_target_failure_leaves_every_test_not_only_the_perturbation_first_ones(embedded_cache, tmp_path):
    """One perturbation of the embedded screen made to fail its CRISPRi check (its own gene raised in its cells) is
    out of the incremental-value observations and the ablation's perturbation read-out, as it is out of the
    perturbation-first tests: one evaluable set for every test."""
    cache, runs = embedded_cache
    dataset = next((cache / "datasets").iterdir())
    adata = ad.read_h5ad(dataset / "cells.h5ad")
    failing = sorted(set(adata.obs["perturbation"]) - {"control"})[0]
    rows = np.nonzero((adata.obs["perturbation"] == failing).to_numpy())[0]
    column = list(adata.var_names).index(failing)                # the simulation's var names are its symbols
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    x[rows, column] = x[rows, column] * 4 + 20                 # the knock-down's own gene goes up
    adata.X = sp.csr_matrix(x)
    data = tmp_path / "screen.h5ad"
    adata.write_h5ad(data)
    out = tmp_path / "cache"
    model = read_manifest(runs["geneformer"]).inputs["model_dir"]
    rc = precompute.main(["--cache", str(out), "--quiet", "--data", str(data), "--model", model,
                          "--reference", str(dataset / "true_network_trrust.tsv"), "--perturbation-col",
                          "perturbation", "--control-label", "control", "--name", "failing", "--n-null", "10",
                          "--set", "ablation.n_cells=6", "--set", "ablation.ks=1", "--set", "ablation.n_random=1",
                          "--set", "cssi.n_fine=0", "--set", "sae.run=off"])
    assert rc == 0
    (run_dir,) = (out / "artifacts").iterdir()
    on_target = pd.read_parquet(run_dir / "on_target.parquet").set_index("perturbation")
    assert on_target.loc[failing, "status"] == "failed"
    de = pd.read_parquet(run_dir / "de_results.parquet")
    panel = set(pd.read_parquet(run_dir / "panel.parquet")["symbol"])
    kept = de[~de["is_self"] & (de["perturbation"] != failing) & de["perturbation"].isin(panel)]
    both = kept.groupby("perturbation")["is_de"].agg(["sum", "size"])
    both = both.index[(both["sum"] > 0) & (both["sum"] < both["size"])]
    expected_obs = int(kept["perturbation"].isin(both).sum())       # an independent count of the observations
    inc = pd.read_parquet(run_dir / "incremental_value.parquet")
    assert inc["n_obs"].max() == expected_obs                      # (the joint split holds out a part of them)
    per = pd.read_parquet(run_dir / "perturbation_auroc.parquet")
    readout = read_manifest(run_dir).readout_layer
    evaluable = per[(per["edge_type"] == "attention_layer_mean") & (per["layer"] == readout)
                    & (per["perturbation"] != failing)]["perturbation"].nunique()
    ablation = pd.read_parquet(run_dir / "ablation_results.parquet")
    assert set(ablation.loc[ablation["readout"] == "perturbation_auroc", "n"]) == {evaluable}


def test_a_paper_protocol_on_data_without_a_perturbation_column_lists_the_departure(tmp_path, caplog):
    """The paper's protocols are perturbation screens: on atlas data the run says, before any stage, that there is no
    perturbation column to follow them with (and the manifest keeps the same rows)."""
    data = mixology_h5ad(tmp_path / "mixology.h5ad", n_cells=40)
    caplog.set_level(logging.WARNING, logger="precompute")
    rc = precompute.main(["--cache", str(tmp_path / "cache"), "--quiet", "--plan", "--protocol", "paper-k562",
                          "--data", str(data), "--model", str(shared_path("geneformer/configs/Geneformer-V1-10M")),
                          "--random-weights", "--dictionaries", str(shared_path("geneformer/dict_gc30M")),
                          "--reference", str(shared_path("regulatory/trrust_rawdata.human.tsv")),
                          "--set", "extraction.panel_size=300", "--set", "perturbation.universe_size=200"])
    assert rc == 0
    line = next(r.getMessage() for r in caplog.records if "departure(s)" in r.getMessage())
    assert line.startswith("protocol paper-k562, ") and "perturbation column: paper a CRISPR screen" in line
    assert "extraction.panel_size: paper 2500, this run 300" in line


def test_a_damaged_file_of_a_finished_run_is_named_on_first_read(embedded_cache, tmp_path):
    """A table whose bytes changed (same size) fails its manifest sha256 on first read, and a truncated attention
    array its recorded size, each with the file named and the fix, instead of a failed read deep in a page."""
    from app.data import DamagedFile

    _, runs = embedded_cache
    source = runs["geneformer"]
    run_dir = tmp_path / "cache" / "artifacts" / source.name
    shutil.copytree(source, run_dir)
    table = run_dir / "head_ranking.parquet"
    raw = bytearray(table.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    table.write_bytes(bytes(raw))
    store = ArtifactStore(tmp_path / "cache")
    with pytest.raises(DamagedFile, match="head_ranking.parquet is damaged .its sha256 differs"):
        store.ranking(source.name)
    assert len(store.panel(source.name))                                # an intact table still opens
    array = run_dir / "attention_layer_sums.npy"
    array.write_bytes(array.read_bytes()[:-64])
    with pytest.raises(DamagedFile, match="attention_layer_sums.npy is damaged .* bytes where the manifest recorded"):
        store.attention(source.name)
