"""Where the raw counts are (analysis.io.cells.choose_counts), on real cells written in the layouts users have:
a CELLxGENE / Census file (log-normalised X, integer counts in raw.X, Ensembl ids as the var index, symbols in
var['feature_name'], cell_type in obs) is read from raw.X in memory and from disk, and the run records which matrix
and why; --counts-layer names any other place; a file with no counts anywhere is refused with the places it has."""
from __future__ import annotations

import pickle

import anndata as ad
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
