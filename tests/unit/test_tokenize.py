"""Geneformer rank-value encoding: a hand-computed toy cell, V2 special tokens, and the real dictionaries."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from analysis.errors import InputError
from analysis.io.cells import from_anndata
from analysis.models.geneformer.tokenizer import GeneformerDictionaries, load_dictionaries, tokenize
from tests.conftest import shared_path

GENES = ["ENSG_A", "ENSG_B", "ENSG_C", "ENSG_D", "ENSG_E"]
MEDIANS = [1.0, 2.0, 0.5, 10.0, 1.0]


def _toy(n_counts=20.0, special=False):
    adata = ad.AnnData(X=sp.csr_matrix(np.array([[0, 5, 2, 10, 1]], dtype=np.float32)),
                       obs=pd.DataFrame({"n_counts": [n_counts]}, index=["c0"]),
                       var=pd.DataFrame(index=GENES))
    token = {"<pad>": 0, "<mask>": 1, **({"<cls>": 2, "<eos>": 3} if special else {})}
    token.update({g: 10 + i for i, g in enumerate(GENES)})
    return from_anndata(adata), GeneformerDictionaries(token=token, median=dict(zip(GENES, MEDIANS)))


def test_toy_cell_by_hand():
    # normalised = count / 20 * 10,000 / median: A 0 (dropped), B 1250, C 2000, D 500, E 500 (tie: data order)
    cells, dicts = _toy()
    tok = tokenize(cells, dicts, max_len=2048)
    assert tok.input_ids[0].tolist() == [12, 11, 13, 14]
    assert tok.genes["gene_id"][tok.gene_index[0]].tolist() == ["ENSG_C", "ENSG_B", "ENSG_D", "ENSG_E"]
    assert tokenize(cells, dicts, max_len=3).input_ids[0].tolist() == [12, 11, 13]


def test_toy_cell_v2_special_tokens():
    cells, dicts = _toy(special=True)
    tok = tokenize(cells, dicts, max_len=5)  # 5 - 2 genes kept, wrapped in <cls> ... <eos>
    assert tok.input_ids[0].tolist() == [2, 12, 11, 13, 3]
    assert tok.gene_index[0, 0] == -1 and tok.gene_index[0, -1] == -1
    assert tok.attention_mask.sum() == 5


def test_no_vocabulary_overlap_is_a_clear_error():
    cells, dicts = _toy()
    other = GeneformerDictionaries(token={"<pad>": 0, "<mask>": 1, "X": 2}, median={"X": 1.0}, source="dictX")
    with pytest.raises(InputError, match="none of the 5 genes is in the model's vocabulary"):
        tokenize(cells, other, 2048)


def _mixology(n=12):
    counts = pd.read_csv(shared_path("scrnaseq/sc_mixology/sc_celseq2_5cl_p1.count.csv.gz"), index_col=0)
    counts = counts.iloc[:, :n]
    return ad.AnnData(X=sp.csr_matrix(counts.T.to_numpy(dtype=np.float32)),
                      obs=pd.DataFrame(index=counts.columns), var=pd.DataFrame(index=counts.index))


@pytest.mark.parametrize("version,max_len", [("dict_gc30M", 2048), ("dict_gc104M", 4096)])
def test_real_dictionaries_on_real_cells(version, max_len):
    dicts = load_dictionaries(shared_path(f"geneformer/{version}"))
    adata = _mixology()
    cells = from_anndata(adata)
    tok = tokenize(cells, dicts, max_len)
    x = adata.X.toarray()
    for i in range(3):
        genes = tok.genes.iloc[tok.gene_index[i][tok.gene_index[i] >= 0]]
        assert len(genes) <= max_len
        # independent recomputation of the top of the ranking with pandas
        col = {g: j for j, g in enumerate(adata.var_names)}
        norm = pd.Series({g: x[i, col[g]] / x[i].sum() * 1e4 / dicts.median[g]
                          for g in adata.var_names if g in dicts.median and g in dicts.token and x[i, col[g]] > 0})
        expected = norm.sort_values(ascending=False, kind="stable").index[: len(genes)]
        assert list(genes["gene_id"][:50]) == list(expected[:50])
        assert tok.input_ids[i, int(dicts.special_tokens)] == dicts.token[expected[0]]
    assert tok.params["special_tokens"] == (version == "dict_gc104M")


class _Payload:
    """Pickles as a call to ``os.system``: what a hostile 'dictionary' would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_a_dictionary_that_would_run_code_is_refused_without_running_it(tmp_path):
    import pickle

    from analysis.models.geneformer.tokenizer import save_dictionaries

    _, dicts = _toy()
    save_dictionaries(dicts, tmp_path, "toy")
    assert load_dictionaries(tmp_path).token == dicts.token                      # numpy-free pickles load
    marker = tmp_path / "ran"
    (tmp_path / "gene_median_dictionary_toy.pkl").write_bytes(pickle.dumps({"ENSG_A": _Payload(marker)}))
    with pytest.raises(InputError, match="gene_median_dictionary_toy.pkl.*posix.system|gene_median.*system"):
        load_dictionaries(tmp_path)
    assert not marker.exists()


def test_dictionaries_of_two_releases_are_refused_and_each_release_loads(tmp_path):
    """A token dictionary of one Geneformer release with the median dictionary of another (the real gc104M and gc30M
    files) is refused, naming the genes without a median; each real release on its own loads."""
    import shutil

    from analysis.errors import InputError
    from analysis.models.geneformer.tokenizer import load_dictionaries
    from tests.conftest import shared_path

    for release in ("dict_gc104M", "dict_gc30M"):
        assert load_dictionaries(shared_path(f"geneformer/{release}")).token
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(shared_path("geneformer/dict_gc104M/token_dictionary_gc104M.pkl"), mixed)
    shutil.copy(shared_path("geneformer/dict_gc30M/gene_median_dictionary_gc30M.pkl"), mixed)
    with pytest.raises(InputError, match="has no median for 648 of the token dictionary's 20,271 genes"):
        load_dictionaries(mixed)
