"""Counts left on disk (analysis.io.backed) give what the same counts in memory give, block by block: rows, columns,
validation errors, per-group moments (against numpy on the dense matrix), DE, the on-target check, HVGs and
tokens."""
import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from analysis.errors import InputError
from analysis.io import backed
from analysis.io.backed import BackedCounts, take_rows
from analysis.io.cells import load_cells
from analysis.io.expression import log1p_cp10k
from analysis.models.geneformer.tokenizer import GeneformerDictionaries, tokenize
from analysis.scoring.panel import highly_variable
from analysis.scoring.perturbation import differential_expression, on_target_check
from analysis.sim.simulate import simulate_screen
from analysis.config import SimulationConfig

BLOCK = 37    # rows per block: the screen below spans many blocks, the last one short


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(backed, "BLOCK_ROWS", BLOCK)


@pytest.fixture(scope="module")
def screen_file(tmp_path_factory):
    adata, _ = simulate_screen(SimulationConfig(n_cells=500, n_perturbed=6, seed=3))
    adata.obs = adata.obs.drop(columns=[c for c in ("n_counts",) if c in adata.obs])
    path = tmp_path_factory.mktemp("backed") / "screen.h5ad"
    adata.write_h5ad(path)
    return path, adata


def _both(path):
    kwargs = dict(perturbation_col="perturbation", cell_state_col="cell_state", require_ensembl=False)
    return load_cells(path, backed=False, **kwargs), load_cells(path, backed=True, **kwargs)


def test_backed_counts_read_like_the_matrix(screen_file):
    path, adata = screen_file
    memory, disk = _both(path)
    assert isinstance(disk.counts, BackedCounts) and isinstance(memory.counts, sp.csr_matrix)
    dense = adata.X.toarray()
    cols = np.array([5, 0, 17, 3])
    assert np.array_equal(disk.counts[:, cols].toarray(), dense[:, cols])
    rows = np.array([400, 3, 3, 120, 36, 37])          # unsorted, repeated, across a block edge
    assert np.array_equal(take_rows(disk.counts, rows).toarray(), dense[rows])
    mask = adata.obs["perturbation"].to_numpy() == "control"
    assert np.array_equal(disk.subset(mask).counts.toarray(), dense[mask])
    assert take_rows(disk.counts, np.array([], dtype=int)).shape == (0, dense.shape[1])
    assert np.array_equal(disk.obs["n_counts"].to_numpy(), dense.sum(axis=1))
    assert np.array_equal(memory.obs["n_counts"].to_numpy(), dense.sum(axis=1))
    copy = pickle.loads(pickle.dumps(disk.counts))
    assert np.array_equal(copy[np.array([1, 2])].toarray(), dense[[1, 2]])


def test_moments_match_numpy_per_group(screen_file):
    path, adata = screen_file
    _, disk = _both(path)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    x = np.asarray(log1p_cp10k(adata.X, adata.X.sum(axis=1).A1))
    m = disk.moments
    assert list(m.labels) == sorted(set(labels))
    for i, label in enumerate(m.labels):
        xg = x[labels == label]
        assert m.n[i] == len(xg)
        assert np.allclose(m.mean()[i], xg.mean(0), rtol=1e-12, atol=1e-12)
        assert np.allclose(m.var()[i], xg.var(0, ddof=1), rtol=1e-9, atol=1e-12)
        assert np.array_equal(m.detected[i], (xg > 0).sum(0))
    pooled = m.pooled()
    assert np.allclose(pooled.var(ddof=0)[0], x.var(0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("test", ["welch", "mannwhitney"])
def test_de_on_disk_equals_in_memory(screen_file, test):
    path, _ = screen_file
    memory, disk = _both(path)
    universe = pd.DataFrame({"gene_id": memory.gene_ids[:60], "symbol": memory.symbols[:60]})
    a = differential_expression(memory, universe, test=test, n_control=80, seed=2)
    b = differential_expression(disk, universe, test=test, n_control=80, seed=2)
    pd.testing.assert_frame_equal(a.groups, b.groups)
    pd.testing.assert_frame_equal(a.table.drop(columns=["p", "q", "lfc"]), b.table.drop(columns=["p", "q", "lfc"]))
    for col in ("p", "q", "lfc"):
        assert np.allclose(a.table[col], b.table[col], rtol=1e-9, atol=1e-300)
    pd.testing.assert_frame_equal(on_target_check(memory, "crispri"), on_target_check(disk, "crispri"))
    assert np.array_equal(highly_variable(memory, memory.gene_ids, 40), highly_variable(disk, disk.gene_ids, 40))


def test_tokens_from_disk_equal_tokens_from_memory(screen_file):
    path, _ = screen_file
    memory, disk = _both(path)
    token = {"<pad>": 0, "<mask>": 1, **{g: 2 + i for i, g in enumerate(memory.gene_ids)}}
    dicts = GeneformerDictionaries(token=token, median={g: 1.0 + i % 5 for i, g in enumerate(memory.gene_ids)})
    a, b = tokenize(memory, dicts, max_len=32), tokenize(disk, dicts, max_len=32)
    assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.attention_mask, b.attention_mask)


def _write(tmp_path, x, name="bad.h5ad", layer=False):
    obs = pd.DataFrame({"perturbation": ["control"] * (x.shape[0] // 2) + ["G1"] * (x.shape[0] - x.shape[0] // 2)},
                       index=[f"cell{i}" for i in range(x.shape[0])])
    var = pd.DataFrame(index=[f"G{i}" for i in range(x.shape[1])])
    adata = ad.AnnData(X=None if layer else x, obs=obs, var=var, layers={"counts": x} if layer else None)
    adata.write_h5ad(tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("as_backed", [False, True])
def test_validation_streams_and_names_the_problem(tmp_path, as_backed):
    rng = np.random.default_rng(0)
    x = rng.poisson(2.0, (200, 6)).astype(np.float32)
    nan = x.copy()
    nan[150, 2] = np.nan                         # in the fifth block of 37 rows
    nan[160, 1] = np.inf
    with pytest.raises(InputError, match=r"2 NaN or infinite value\(s\) in 2 cell\(s\) \(first: 'cell150'\)"):
        load_cells(_write(tmp_path, sp.csr_matrix(nan)), backed=as_backed, perturbation_col="perturbation",
                   require_ensembl=False)
    negative = x.copy()
    negative[190, 0] = -1
    with pytest.raises(InputError, match=r"1 negative value"):
        load_cells(_write(tmp_path, negative, layer=True), backed=as_backed, perturbation_col="perturbation",
                   require_ensembl=False)
    with pytest.raises(InputError, match=r"layers\['counts'\] holds non-integer values"):
        load_cells(_write(tmp_path, x + 0.5, layer=True), backed=as_backed, require_ensembl=False)
    with pytest.raises(InputError, match="no non-zero counts"):
        load_cells(_write(tmp_path, sp.csr_matrix(x.shape, dtype=np.float32)), backed=as_backed,
                   require_ensembl=False)


def test_large_counts_stay_on_disk_and_csc_is_refused(tmp_path, monkeypatch):
    x = np.random.default_rng(1).poisson(1.0, (50, 8)).astype(np.float32)
    monkeypatch.setattr(backed, "IN_MEMORY_LIMIT", 0)
    cells = load_cells(_write(tmp_path, sp.csr_matrix(x)), require_ensembl=False)
    assert isinstance(cells.counts, BackedCounts)
    assert np.array_equal(cells.counts[:, [1, 2]].toarray(), x[:, [1, 2]])
    with pytest.raises(InputError, match="stored as csc_matrix.*must be CSR"):
        load_cells(_write(tmp_path, sp.csc_matrix(x), name="csc.h5ad"), require_ensembl=False)
    assert isinstance(load_cells(_write(tmp_path, x, name="dense.h5ad"), require_ensembl=False).counts, BackedCounts)
    with pytest.raises(InputError, match="not a readable AnnData"):
        (tmp_path / "junk.h5ad").write_text("not hdf5")
        load_cells(tmp_path / "junk.h5ad")


@pytest.mark.parametrize("family", ["geneformer", "scgpt-zero_shot", "scgpt-panel"])
def test_streamed_tokens_equal_tokenising_every_cell(screen_file, family):
    """tokens_of (what precompute and the app's jobs hold: the kept cells' tokens, every cell's presence) equals
    tokenising every cell at once and subsetting, across blocks and with counts on disk; scGPT's random bins and
    gene sample continue one stream across the blocks."""
    from analysis.models.base import tokens_of
    from analysis.models.geneformer.tokenizer import GeneformerTokenizer
    from analysis.models.scgpt.tokenizer import ScGPTTokenizer
    path, _ = screen_file
    memory, disk = _both(path)
    panel = None
    if family == "geneformer":
        token = {"<pad>": 0, "<mask>": 1, **{g: 2 + i for i, g in enumerate(memory.gene_ids)}}
        tokenizer = GeneformerTokenizer(GeneformerDictionaries(
            token=token, median={g: 1.0 + i % 5 for i, g in enumerate(memory.gene_ids)}), 24)
    else:
        vocab = {"<pad>": 0, "<cls>": 1, **{s: 2 + i for i, s in enumerate(memory.raw_symbols)}}
        tokenizer = ScGPTTokenizer(vocab, n_bins=11, max_len=20, mode=family.split("-")[1], seed=4)
        if tokenizer.panel_dependent:
            genes = tokenizer.vocabulary_genes(memory)
            panel = pd.DataFrame({"gene_index": np.arange(0, 30, 2)}).assign(
                gene_id=lambda f: genes["gene_id"].to_numpy()[f["gene_index"]])
    keep = np.sort(np.random.default_rng(0).choice(memory.n_cells, 90, replace=False))
    whole = tokenizer.tokenize(memory, panel=panel)
    expected = whole.subset(keep)
    for cells in (memory, disk):
        got, presence = tokens_of(tokenizer, cells, keep, panel=panel)
        assert np.array_equal(presence, whole.gene_presence())
        for name in ("input_ids", "attention_mask", "gene_index", "values"):
            a, b = getattr(got, name), getattr(expected, name)
            assert (a is None and b is None) or np.array_equal(a, b), name
        pd.testing.assert_frame_equal(got.obs, expected.obs)
