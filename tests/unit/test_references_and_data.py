"""Reference loaders on the real TRRUST / DoRothEA files, and clear errors for bad tables and bad AnnData."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from analysis.config import ConfigError, load_config
from analysis.errors import InputError
from analysis.io.cells import from_anndata, load_cells
from analysis.io.references import load_dorothea, load_reference, load_trrust
from tests.conftest import shared_path


def test_real_trrust():
    ref = load_trrust(shared_path("regulatory/trrust_rawdata.human.tsv"))
    assert len(ref.edges) == 8427 and len(ref.tfs) == 795  # PROVENANCE.md: unique pairs and TFs
    assert set(ref.edges["mode"]) <= {"Activation", "Repression", "Unknown"}


def test_real_dorothea_confidence_filter():
    path = shared_path("regulatory/dorothea_hs_ABC.tsv")
    raw = pd.read_csv(path, sep="\t")
    ref = load_dorothea(path, "B")
    expected = raw[raw["confidence"].isin(["A", "B"])].drop_duplicates(["tf", "target"])
    assert len(ref.edges) == len(expected) and set(ref.edges["confidence"]) == {"A", "B"}
    assert load_reference(f"dorothea:{path}", "A").edges["confidence"].eq("A").all()


def test_direction_known_trrust_is_the_papers_subset():
    """Supplementary Note 13.5: 4,859 of the 8,427 unique pairs have an Activation or Repression entry."""
    path = shared_path("regulatory/trrust_rawdata.human.tsv")
    ref = load_reference(f"trrust_direction_known:{path}")
    assert len(ref.edges) == 4859 and ref.name == "TRRUST_direction_known"
    assert set(ref.edges["mode"]) == {"Activation", "Repression"}
    assert ref.pairs() <= load_trrust(path).pairs()


def test_real_collectri_and_reference_spec_errors(tmp_path):
    path = shared_path("regulatory/collectri_human_tf_target_sign.csv")
    raw = pd.read_csv(path)
    ref = load_reference(f"collectri:{path}")
    assert len(ref.edges) == len(raw.drop_duplicates(["tf", "target"])) and ref.name == "CollecTRI"
    assert (ref.edges["mode"] == "Repression").sum() == len(raw[raw["sign"] < 0].drop_duplicates(["tf", "target"]))
    with pytest.raises(InputError, match="unknown kind 'grn'; write KIND:PATH with KIND one of"):
        load_reference(f"grn:{path}")
    empty = tmp_path / "empty_trrust.tsv"
    empty.write_text("")
    with pytest.raises(InputError, match="not a readable|has no TF-target edges"):
        load_reference(str(empty))
    header_only = tmp_path / "trrust_header.tsv"
    header_only.write_text("tf\ttarget\tmode\tpmid\n")
    with pytest.raises(InputError, match="has no TF-target edges; check the file"):
        load_reference(str(header_only))
    unknown_only = tmp_path / "trrust_unknown.tsv"
    unknown_only.write_text("TP53\tMDM2\tUnknown\t1\n")
    with pytest.raises(InputError, match="has no TF-target edges with a known direction"):
        load_reference(f"trrust_direction_known:{unknown_only}")
    with pytest.raises(InputError, match="not a CollecTRI table"):
        load_reference(f"collectri:{unknown_only}")


@pytest.mark.parametrize("content,message", [
    ("TP53\tMDM2\n", "has 2 tab-separated column"),
    ("TP53\tMDM2\tActivates\t123\n", "line 1: mode 'Activates'"),
    ("TP53,MDM2,Activation,1\n", "tab-separated column"),
])
def test_malformed_trrust(tmp_path, content, message):
    p = tmp_path / "bad.tsv"
    p.write_text(content)
    with pytest.raises(InputError, match=message):
        load_trrust(p)


def _adata(x, **obs):
    return ad.AnnData(X=sp.csr_matrix(np.asarray(x, dtype=np.float32)),
                      obs=pd.DataFrame(obs or None, index=[f"c{i}" for i in range(len(x))]),
                      var=pd.DataFrame(index=[f"ENSG{i:011d}" for i in range(len(x[0]))]))


def test_log_normalised_is_rejected():
    with pytest.raises(InputError, match="looks normalised or log-transformed"):
        from_anndata(_adata(np.log1p([[1, 2, 0], [3, 0, 1]])))


def test_counts_layer_is_used():
    a = _adata(np.log1p([[1, 2, 0], [3, 0, 1]]))
    a.layers["counts"] = sp.csr_matrix(np.array([[1, 2, 0], [3, 0, 1]], dtype=np.float32))
    assert from_anndata(a).counts.sum() == 7


def test_not_an_h5ad(tmp_path):
    p = tmp_path / "cells.h5ad"
    p.write_text("gene,cell\n")
    with pytest.raises(InputError, match="not a readable AnnData"):
        load_cells(p)


def test_missing_control_label():
    a = _adata([[1, 2, 0], [3, 0, 1]], pert=["TP53", "MYC"])
    with pytest.raises(InputError, match="no control cells"):
        from_anndata(a, perturbation_col="pert")
    with pytest.raises(InputError, match="perturbation column 'nope'"):
        from_anndata(a, perturbation_col="nope")


def test_config_layers(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('name = "t"\n[extraction]\npanel_size = 100\n[ranking]\ntop_k = [10, 20]\n')
    cfg = load_config(toml, {"extraction.batch_size": "3"}, environ={"SCFMX_EXTRACTION__PANEL_SIZE": "200"})
    assert (cfg.name, cfg.extraction.panel_size, cfg.extraction.batch_size, cfg.ranking.top_k) == ("t", 200, 3, (10, 20))
    assert cfg.config_hash() != load_config().config_hash()
    with pytest.raises(ConfigError, match="unknown config key 'extraction.nope'"):
        load_config(cli={"extraction.nope": 1})


@pytest.mark.parametrize("key,value,message", [
    ("name", "../../x", "name = '../../x': use letters"), ("data.max_cells", "1", "data.max_cells = 1: must be at least 3"),
    ("name", "x" * 101, "name is 101 characters long: use at most 100"),
    ("extraction.batch_size", "0", "extraction.batch_size = 0"), ("ranking.n_null", "-1", "ranking.n_null = -1"),
    ("ranking.directions", "sideways", "ranking.directions = 'sideways' is not allowed"),
    ("ranking.top_k", "0", r"ranking.top_k = \(0,\): must list integers >= 1"),
    ("perturbation.test", "bogus", "perturbation.test = 'bogus' is not allowed"),
    ("tokenizer.mode", "random", "tokenizer.mode = 'random' is not allowed"),
    ("model.device", "tpu", "model.device = 'tpu': use auto, cpu or cuda"),
    ("perturbation.alpha", "2", r"perturbation.alpha = 2.0: must be between 0 and 1"),
    ("perturbation.alpha", "0", r"perturbation.alpha = 0.0: must be between 0 and 1"),
    ("perturbation.lfc_threshold", "nan", "perturbation.lfc_threshold = nan: must be a finite number"),
    ("perturbation.grid_lfc", "0.1,inf", "perturbation.grid_lfc = inf: must be a finite number"),
    ("cssi.n_null", "-3", "cssi.n_null = -3: must not be negative"),
    ("perturbation.n_degree_null", "-1", "perturbation.n_degree_null = -1: must not be negative"),
    ("train.learning_rate", "nan", "train.learning_rate = nan: must be a finite number"),
    ("sae.lr", "0", "sae.lr = 0.0: must be greater than 0"),
    ("perturbation.location_test", "z", "perturbation.location_test = 'z' is not allowed"),
    ("cssi.layers", "1,1", "cssi.layers = 1,1: lists 1 more than once"),
    ("sae.layers", "0,2,0", "sae.layers = 0,2,0: lists 0 more than once"),
    ("ablation.ks", "5,5,10", "ablation.ks = 5,5,10: lists 5 more than once"),
    ("cssi.confirmatory_metric", "precision", "cssi.confirmatory_metric = 'precision' is not allowed"),
    ("perturbation.residual_seeds", "0", "perturbation.residual_seeds = 0: must be at least 1")])
def test_settings_are_checked_before_anything_runs(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cli={key: value})


def test_signed_settings_keep_their_negative_values():
    cfg = load_config(cli={"perturbation.readout_layer": "-2", "train.planted_head": "-1"})
    assert cfg.perturbation.readout_layer == -2 and cfg.train.planted_head == -1


@pytest.mark.parametrize("flag", [["--workers", "-1"], ["--workers", "0"], ["--threads", "0"], ["--threads", "x"]])
def test_worker_and_thread_counts_below_one_are_refused(flag, capsys):
    import precompute

    with pytest.raises(SystemExit):
        precompute.parse_args(flag)
    err = capsys.readouterr().err
    assert "must be 1 or more" in err or "is not a whole number" in err


def test_nan_counts_and_missing_perturbation_labels_are_refused():
    a = _adata([[1, 2, 0], [np.nan, 0, 1]], pert=["control", "MYC"])
    with pytest.raises(InputError, match="NaN or infinite value"):
        from_anndata(a, perturbation_col="pert")
    b = _adata([[1, 2, 0], [3, 0, 1]], pert=["control", None])
    with pytest.raises(InputError, match="1 cell\\(s\\) have no label"):
        from_anndata(b, perturbation_col="pert")


@pytest.mark.parametrize("labels, extra, message", [
    (["control", "MYC", " ", "GATA1"], {}, r"1 cell\(s\) \(first: 'c2'\) in obs\['pert'\] have a blank or missing"),
    (["control", "MYC", "nan", "NA"], {}, r"2 cell\(s\) \(first: 'c2', 'c3'\) .* blank or missing-value label"),
    (["control", "MYC", "control ", "Control"], {}, "differs from the control label 'control' only in case"),
    (["control", "MYC", "MYC", "control"], {"n_counts": [10, np.nan, 5, 7]}, r"n_counts.*'c1'"),
    (["control", "MYC", "MYC", "control"], {"n_counts": ["10", "x", "5", "7"]}, r"n_counts.*'c1'"),
    (["control", "MYC", "MYC", "control"], {"n_counts": [10, 4, 0, 7]}, r"n_counts.*'c2'")])
def test_obs_columns_read_are_validated_naming_the_rows(labels, extra, message):
    a = _adata([[1, 2, 0], [3, 0, 1], [2, 2, 2], [1, 1, 1]], pert=labels, **extra)
    with pytest.raises(InputError, match=message):
        from_anndata(a, perturbation_col="pert")


def test_valid_obs_columns_pass_and_keep_their_totals():
    a = _adata([[1, 2, 0], [3, 0, 1], [2, 2, 2], [1, 1, 1]], pert=["control", "MYC", "MYC", "control"],
               n_counts=[10, 4, 6.5, 7])
    cells = from_anndata(a, perturbation_col="pert")
    assert cells.obs["n_counts"].tolist() == [10.0, 4.0, 6.5, 7.0] and cells.perturbed_genes() == ["MYC"]


def _raw_counts(n_cells=60, n_genes=400, seed=0):
    rng = np.random.default_rng(seed)
    size = rng.lognormal(8, 0.6, n_cells)                      # raw UMI totals vary several-fold
    rates = rng.dirichlet(np.full(n_genes, 0.3))
    return rng.poisson(np.outer(size, rates)).astype(np.float64)


@pytest.mark.parametrize("transform, message", [
    (lambda x: np.floor(x / x.sum(1, keepdims=True) * 1e4), "looks normalised to a fixed total"),
    (lambda x: np.round(x / x.sum(1, keepdims=True) * 1e6), "looks normalised to a fixed total"),
    (lambda x: x * 3, "every non-zero value is a multiple of 3"),
    (lambda x: np.round(np.log1p(x / x.sum(1, keepdims=True) * 1e4)), "looks like rounded log-normalised values"),
    (lambda x: np.round(np.log2(1 + x / x.sum(1, keepdims=True) * 1e6)), "looks like rounded log-normalised")])
def test_integer_valued_normalised_data_is_refused(transform, message):
    with pytest.raises(InputError, match=message):
        from_anndata(_adata(transform(_raw_counts())))


def _real_cells(n_genes=None):
    """[297 cells, genes] raw CEL-seq2 UMI counts of five lung cancer lines (../shared/data, sc_mixology)."""
    counts = pd.read_csv(shared_path("scrnaseq/sc_mixology/sc_celseq2_5cl_p1.count.csv.gz"), index_col=0)
    x = counts.T.to_numpy(dtype=np.float64)
    return x if n_genes is None else x[:, np.argsort(-x.var(axis=0))[:n_genes]]


@pytest.mark.parametrize("n_genes", [None, 2000])
@pytest.mark.parametrize("target", [1e4, 1e6])
def test_rounded_logs_of_real_cells_are_refused_and_their_raw_counts_pass(n_genes, target):
    raw = _real_cells(n_genes)
    assert from_anndata(_adata(raw)).n_cells == 297
    logged = np.round(np.log1p(raw / raw.sum(1, keepdims=True) * target))
    with pytest.raises(InputError, match="looks like rounded log-normalised values"):
        from_anndata(_adata(logged))


def test_raw_counts_of_varied_depth_pass():
    assert from_anndata(_adata(_raw_counts())).n_cells == 60


def test_shallow_raw_counts_that_never_exceed_the_log_bound_pass():
    """Raw counts of a small panel at low depth: every value <= 20, yet mostly 1s and a dominant gene per cell."""
    rng = np.random.default_rng(1)
    x = rng.poisson(np.outer(rng.lognormal(3, 0.4, 80), rng.dirichlet(np.full(40, 0.5)))).astype(np.float64)
    x = np.minimum(x, 20)
    assert x.max() <= 20 and from_anndata(_adata(x)).n_cells == 80
