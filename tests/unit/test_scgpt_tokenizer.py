"""scGPT tokenisation (shared/design/scgpt.md section 2) on hand-made rows and on the real 297-cell data mapped to
the real whole-human vocabulary: symbol matching, per-cell binning against an independent implementation of
scGPT's algorithm drawn from numpy's global RNG, <cls> and padding, both modes, seeding."""
from functools import lru_cache

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from analysis.errors import InputError
from analysis.io.cells import from_anndata
from analysis.models.geneformer.tokenizer import load_name_table
from analysis.models.scgpt.checkpoint import read_vocab
from analysis.models.scgpt.tokenizer import ScGPTTokenizer, bin_values
from tests.conftest import shared_path


def reference_bins(row, n_bins):
    """scGPT's per-cell binning as the fact sheet states it (section 2.4), drawing from numpy's global RNG."""
    out = np.zeros(row.size, dtype=np.int64)
    if row.max() == 0:
        return out
    nz = np.nonzero(row)[0]
    edges = np.quantile(row[nz], np.linspace(0, 1, n_bins - 1))
    rand = np.random.rand(nz.size)
    left, right = np.digitize(row[nz], edges), np.digitize(row[nz], edges, right=True)
    out[nz] = np.ceil(rand * (right - left) + left).astype(np.int64)
    return out


@lru_cache(maxsize=1)
def name_table():
    return load_name_table(shared_path("geneformer/dict_gc104M"))


@lru_cache(maxsize=1)
def _counts():
    return pd.read_csv(shared_path("scrnaseq/sc_mixology/sc_celseq2_5cl_p1.count.csv.gz"), index_col=0)


def mixology_cells(n_cells=297, *, symbol_to_id=None, n_genes=None, as_anndata=False):
    """Real raw counts (Ensembl-keyed var), the first ``n_cells`` cells and a seeded choice of ``n_genes`` genes."""
    counts = _counts().iloc[:, :n_cells]
    if n_genes:
        counts = counts.iloc[np.sort(np.random.default_rng(0).choice(counts.shape[0], n_genes, replace=False))]
    adata = ad.AnnData(X=sp.csr_matrix(counts.T.to_numpy(dtype=np.float32)),
                       obs=pd.DataFrame(index=counts.columns), var=pd.DataFrame(index=counts.index))
    return adata if as_anndata else from_anndata(adata, symbol_to_id=symbol_to_id, require_ensembl=False)


def hand_cells(symbols, rows):
    adata = ad.AnnData(X=sp.csr_matrix(np.array(rows, dtype=np.float32)),
                       obs=pd.DataFrame(index=[f"c{i}" for i in range(len(rows))]), var=pd.DataFrame(index=symbols))
    return from_anndata(adata, require_ensembl=False)


VOCAB = {"A": 0, "B": 1, "C": 2, "D": 3, "E": 4, "Tp53": 5, "<pad>": 6, "<cls>": 7, "<eoc>": 8}


def test_binning_by_hand_with_a_tie_spanning_edges():
    """Non-zero values [5, 5, 5, 1, 9] with 5 bins: edges = quantiles at 0, 1/3, 2/3, 1 = [1, 5, 5, 9]. The three
    tied 5s span edges 1..2, so each lands at random in bin 2 or 3; 1 -> bin 1, 9 -> bin 4, zeros -> 0."""
    row = np.array([0, 5, 5, 5, 1, 0, 9], dtype=float)
    bins = bin_values(row, 5, np.random.RandomState(0))
    assert bins[[0, 5]].tolist() == [0, 0] and bins[4] == 1 and bins[6] == 4
    assert set(bins[1:4]) <= {2, 3}
    spread = {tuple(bin_values(row, 5, np.random.RandomState(s))[1:4]) for s in range(30)}
    assert len(spread) > 1                                  # ties really are spread at random
    np.random.seed(7)
    assert np.array_equal(bin_values(row, 5, np.random.RandomState(7)), reference_bins(row, 5))


def test_panel_mode_cls_zeros_order_and_dropped_genes():
    cells = hand_cells(["B", "tp53", "A", "X9", "C"], [[3, 1, 0, 5, 8], [0, 2, 4, 0, 1]])
    tok = ScGPTTokenizer(VOCAB, n_bins=51, max_len=10, pad_value=-2, cls_value=-2, mode="panel", seed=0)
    genes = tok.vocabulary_genes(cells)
    assert genes["vocab_symbol"].tolist() == ["B", "A", "C"]      # case-sensitive: tp53 != Tp53; X9 unknown
    panel = pd.DataFrame({"gene_index": [2, 0, 1]})                # panel order C, B, A
    t = tok.tokenize(cells, panel=panel)
    assert t.input_ids.tolist() == [[7, 2, 1, 0]] * 2 and t.attention_mask.all()
    assert t.values[:, 0].tolist() == [-2, -2] and t.gene_index[:, 0].tolist() == [-1, -1]
    assert t.values[0, 3] == 0 and t.values[1, 2] == 0              # zeros stay tokens, value 0
    assert t.values[0, 1] > t.values[0, 2] > 0                      # C (8) above B (3), binned over the panel
    assert t.params["mode"] == "panel" and t.params["cls_value"] == -2
    assert ScGPTTokenizer(VOCAB, n_bins=51, max_len=10, cls_value=0.0).tokenize(cells, panel=panel).values[0, 0] == 0
    with pytest.raises(InputError, match="lower extraction.panel_size to at most 2"):
        ScGPTTokenizer(VOCAB, n_bins=51, max_len=3).tokenize(cells, panel=panel)


def test_zero_shot_pads_samples_and_is_seeded():
    symbols = list("ABCDE")
    cells = hand_cells(symbols, [[1, 2, 3, 4, 5], [0, 0, 7, 0, 0], [9, 0, 0, 1, 0]])
    tok = ScGPTTokenizer(VOCAB, n_bins=51, max_len=4, mode="zero_shot", seed=3)
    t = tok.tokenize(cells)
    assert t.input_ids[:, 0].tolist() == [7, 7, 7] and t.lengths.tolist() == [4, 2, 3]   # <cls> + <= 3 genes
    assert t.input_ids[1, 2:].tolist() == [6, 6] and t.values[1, 2:].tolist() == [-2, -2]  # pad id and value
    assert (t.values[t.gene_index >= 0] >= 1).all()                 # only expressed genes
    again = ScGPTTokenizer(VOCAB, n_bins=51, max_len=4, mode="zero_shot", seed=3).tokenize(cells)
    assert np.array_equal(again.input_ids, t.input_ids) and np.array_equal(again.values, t.values)
    draws = {tuple(ScGPTTokenizer(VOCAB, n_bins=51, max_len=4, mode="zero_shot", seed=s).tokenize(cells)
                   .input_ids[0]) for s in range(10)}
    assert len(draws) > 1                                           # the 3 of 5 genes of cell 0 are sampled


def test_real_cells_real_vocabulary():
    vocab = read_vocab(shared_path("scgpt/vocab_whole_human_60697.json"))
    cells = mixology_cells(symbol_to_id=name_table())
    tok = ScGPTTokenizer(vocab, n_bins=51, max_len=1200, mode="zero_shot", seed=11, symbol_to_id=name_table())
    matched, ids = tok._match(cells)
    assert (ids >= 0).sum() == 14_229                               # fact sheet section 2.2, via gc104M's table
    t = tok.tokenize(cells)
    assert t.n_cells == 297 and (t.lengths == 1200).all()          # every cell has > 1,199 expressed genes
    assert (t.input_ids[:, 0] == vocab["<cls>"]).all() and (t.values[:, 0] == -2).all()
    genes = t.genes
    x = tok._vocabulary(cells)[0].toarray()                         # [cells, vocabulary genes]
    np.random.seed(11)
    for i in range(t.n_cells):                                      # the same stream, cell by cell
        ref = reference_bins(x[i].astype(float), 51)
        pos = t.gene_index[i, 1:]
        assert np.array_equal(t.values[i, 1:], ref[pos])
        assert set(np.unique(ref[ref > 0])) <= set(range(1, 51))
    assert (genes["token_id"].to_numpy() == [vocab[s] for s in genes["vocab_symbol"]]).all()


def test_raw_and_log_normalised_values_bin_identically():
    x = mixology_cells(n_cells=20).counts.toarray().astype(float)
    logcp = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    for i in range(20):
        assert np.array_equal(bin_values(x[i], 51, np.random.RandomState(i)),
                              bin_values(logcp[i], 51, np.random.RandomState(i)))
