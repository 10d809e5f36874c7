"""Where the raw counts are (analysis.io.cells.choose_counts), on real cells written in the layouts users have:
a CELLxGENE / Census file (log-normalised X, integer counts in raw.X, Ensembl ids as the var index, symbols in
var['feature_name'], cell_type in obs) is read from raw.X in memory and from disk, and the run records which matrix
and why; --counts-layer names any other place; a file with no counts anywhere is refused with the places it has."""
from __future__ import annotations

import pickle

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from analysis.errors import InputError
from analysis.io.backed import row_blocks
from analysis.io.cells import load_cells
from tests.conftest import shared_path

MIXOLOGY = "scrnaseq/sc_mixology/sc_celseq2_5cl_p1"


def _real_counts(n_cells=60, n_genes=400):
    """The first ``n_cells`` real CEL-seq2 cells and the ``n_genes`` genes with the most counts, with their symbols
    from Geneformer's gene-name dictionary."""
    counts = pd.read_csv(shared_path(f"{MIXOLOGY}.count.csv.gz"), index_col=0).iloc[:, :n_cells]
    counts = counts.loc[counts.sum(axis=1).sort_values(ascending=False).index[:n_genes]]
    meta = pd.read_csv(shared_path(f"{MIXOLOGY}.metadata.csv.gz"), index_col=0).reindex(counts.columns)
    with open(shared_path("geneformer/dict_gc30M/gene_name_id_dict_gc30M.pkl"), "rb") as f:
        id_to_symbol = {v: k for k, v in pickle.load(f).items()}
    symbols = [id_to_symbol.get(g, g) for g in counts.index]
    return counts.T.to_numpy(dtype=np.float32), counts.index, symbols, meta["cell_line_demuxlet"].astype(str)


def cellxgene_h5ad(path, **kwargs):
    """The CELLxGENE schema's layout: X = log1p(CP10k) floats, raw.X = the integer counts (raw.var: the index
    only), var indexed by Ensembl id with feature_name, obs['cell_type']."""
    counts, ids, symbols, cell_type = _real_counts(**kwargs)
    normalised = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4).astype(np.float32)
    var = pd.DataFrame({"feature_name": symbols, "feature_biotype": "gene"}, index=pd.Index(ids, name="gene_id"))
    obs = pd.DataFrame({"cell_type": cell_type.to_numpy()}, index=[f"cell{i}" for i in range(len(counts))])
    raw = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=var.index))
    adata = ad.AnnData(X=sp.csr_matrix(normalised), obs=obs, var=var)
    adata.raw = raw
    adata.write_h5ad(path)
    return path, counts, symbols


@pytest.mark.parametrize("backed", [False, True])
def test_a_cellxgene_file_is_read_from_raw_x_and_says_so(tmp_path, backed):
    path, counts, symbols = cellxgene_h5ad(tmp_path / "cellxgene.h5ad")
    cells = load_cells(path, backed=backed, cell_state_col="cell_type")
    assert cells.counts_source.startswith("raw.X (X holds non-integer (normalised) values")
    assert np.array_equal(sp.vstack([block for _, block in row_blocks(cells.counts)]).toarray(), counts)
    assert list(cells.raw_symbols) == symbols and cells.gene_ids[0].startswith("ENSG")
    assert np.allclose(cells.obs["n_counts"], counts.sum(axis=1))


def test_counts_layer_names_any_place_and_a_wrong_name_lists_the_places(tmp_path):
    path, counts, _ = cellxgene_h5ad(tmp_path / "cellxgene.h5ad")
    adata = ad.read_h5ad(path)
    adata.layers["umis"] = adata.raw.X.copy()
    adata.write_h5ad(tmp_path / "layered.h5ad")
    cells = load_cells(tmp_path / "layered.h5ad", counts_layer="umis")
    assert cells.counts_source == "layers['umis'] (--counts-layer umis)"
    assert np.array_equal(cells.counts.toarray(), counts)
    assert load_cells(path, counts_layer="raw").counts_source == "raw.X (--counts-layer raw)"
    with pytest.raises(InputError, match=r"no such matrix \(it has X, raw.X, layers\['umis'\]\)"):
        load_cells(tmp_path / "layered.h5ad", counts_layer="spliced")
    with pytest.raises(InputError, match="X holds non-integer values.*--counts-layer"):
        load_cells(path, counts_layer="X")                      # told to read X, which is normalised


def test_a_file_with_no_counts_anywhere_is_refused_naming_raw_x(tmp_path):
    path, _, _ = cellxgene_h5ad(tmp_path / "cellxgene.h5ad")
    adata = ad.read_h5ad(path)
    del adata.raw
    adata.write_h5ad(tmp_path / "normalised_only.h5ad")
    with pytest.raises(InputError, match=r"non-integer values.*layers\['counts'\] or raw.X.*--counts-layer"):
        load_cells(tmp_path / "normalised_only.h5ad")


def tenx_h5(path, counts, ids, symbols, barcodes):
    """Cell Ranger 3's feature-barcode matrix layout, written by hand: genes x cells as CSC, with one antibody
    capture feature that is not a gene."""
    matrix = sp.csc_matrix(np.vstack([counts.T, np.ones((1, counts.shape[0]))]).astype(np.int32))
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"], m["indices"], m["indptr"] = matrix.data, matrix.indices, matrix.indptr
        m["shape"] = np.array(matrix.shape, dtype=np.int32)
        m["barcodes"] = np.array([b.encode() for b in barcodes])
        features = m.create_group("features")
        features["id"] = np.array([i.encode() for i in [*ids, "CD3_TotalSeqB"]])
        features["name"] = np.array([s.encode() for s in [*symbols, "CD3"]])
        features["feature_type"] = np.array([b"Gene Expression"] * len(ids) + [b"Antibody Capture"])
        features["genome"] = np.array([b"GRCh38"] * (len(ids) + 1))
    return path


def test_a_10x_h5_reads_as_scanpy_reads_it_and_loads_its_gene_counts(tmp_path):
    import scanpy as sc

    from analysis.io.formats import read_10x_h5

    counts, ids, symbols, _ = _real_counts(n_cells=40, n_genes=300)
    path = tenx_h5(tmp_path / "filtered_feature_bc_matrix.h5", counts, list(ids), symbols,
                   [f"AAAC{i:04d}-1" for i in range(len(counts))])
    ours, reference = read_10x_h5(path), sc.read_10x_h5(path)        # scanpy keeps gene expression too
    assert list(ours.var_names) == list(reference.var_names) and list(ours.obs_names) == list(reference.obs_names)
    assert list(ours.var["gene_ids"]) == list(reference.var["gene_ids"])
    assert np.array_equal(ours.X.toarray(), reference.X.toarray())
    cells = load_cells(path)
    assert cells.counts_source.endswith("from a 10x Genomics HDF5 file")
    assert np.array_equal(cells.counts.toarray(), counts) and list(cells.gene_ids) == list(ids)


@pytest.mark.parametrize("suffix", [".loom", ".zarr"])
def test_loom_and_zarr_files_load_through_anndatas_readers(tmp_path, suffix):
    counts, ids, symbols, cell_line = _real_counts(n_cells=40, n_genes=300)
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=pd.DataFrame({"cell_line": cell_line.to_numpy()},
                                                                index=[f"c{i}" for i in range(len(counts))]),
                       var=pd.DataFrame({"gene_name": symbols}, index=pd.Index(ids)))
    path = tmp_path / f"cells{suffix}"
    adata.write_loom(path) if suffix == ".loom" else adata.write_zarr(path)
    cells = load_cells(path, cell_state_col="cell_line")
    assert cells.counts_source.endswith(f"from a {'loom' if suffix == '.loom' else 'zarr AnnData'} file")
    assert np.array_equal(cells.counts.toarray(), counts)
    assert list(cells.raw_symbols) == symbols and list(cells.obs["cell_line"]) == list(cell_line)


def test_a_file_that_is_not_what_its_suffix_says_is_named(tmp_path):
    (tmp_path / "cells.loom").write_text("not a loom file")
    with pytest.raises(InputError, match="cells.loom is not a readable loom file"):
        load_cells(tmp_path / "cells.loom")
    with h5py.File(tmp_path / "old.h5", "w") as f:
        f.create_group("GRCh38")                                        # Cell Ranger 2's layout
    with pytest.raises(InputError, match="not a Cell Ranger 3\\+ feature-barcode matrix"):
        load_cells(tmp_path / "old.h5")


def _log_normalised(tmp_path, name, totals_factor=1.0, column="total_counts"):
    counts, ids, symbols, _ = _real_counts(n_cells=50, n_genes=300)
    totals = counts.sum(axis=1)          # over the kept genes: the totals the normalisation divided by
    x = np.log1p(counts / totals[:, None] * 1e4).astype(np.float32)
    obs = pd.DataFrame({column: totals * totals_factor}, index=[f"c{i}" for i in range(len(counts))])
    path = tmp_path / name
    ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame({"feature_name": symbols}, index=pd.Index(ids))
               ).write_h5ad(path)
    return path, counts


def test_log1p_cp10k_with_its_totals_is_turned_back_into_the_exact_counts_and_says_so(tmp_path):
    path, counts = _log_normalised(tmp_path, "lognorm.h5ad")
    cells = load_cells(path)
    assert np.array_equal(cells.counts.toarray(), counts)                       # exactly the real counts
    assert cells.counts_source == ("X (recovered: X is log1p of counts per 10,000, and expm1(X) x "
                                   "obs['total_counts'] / 10,000 gives integers)")
    wrong, _ = _log_normalised(tmp_path, "wrong_totals.h5ad", totals_factor=1.37)
    with pytest.raises(InputError, match="non-integer values.*n_counts, total_counts or nCount_RNA"):
        load_cells(wrong)                                 # totals that were not the ones normalised by: refused
    bare, _ = _log_normalised(tmp_path, "no_totals.h5ad", column="batch")
    with pytest.raises(InputError, match="non-integer values"):
        load_cells(bare)
