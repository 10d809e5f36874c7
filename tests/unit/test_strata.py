"""CSSI strata against scanpy (the reference implementation of the kNN graph and Leiden), and the nesting that lets
any number of strata be a sum over fine clusters."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from analysis.scoring.strata import add_level, knn, leiden, stratify, umap_connectivities

sc = pytest.importorskip("scanpy")
ad = pytest.importorskip("anndata")


@pytest.fixture(scope="module")
def blobs():
    """Four Gaussian blobs of 90 cells in 10 dimensions, scanpy's neighbours on them."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(2 * c, 1.0, (90, 10)) for c in range(4)]).astype(np.float32)
    adata = ad.AnnData(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.neighbors(adata, n_neighbors=15, use_rep="X")
    return x, adata


def test_connectivities_equal_scanpy(blobs):
    x, adata = blobs
    ours = umap_connectivities(*knn(x, 15))
    theirs = adata.obsp["connectivities"]
    assert ours.nnz == theirs.nnz
    assert abs(ours - theirs).max() < 1e-6


@pytest.mark.parametrize("resolution,seed", [(0.3, 0), (1.0, 0), (1.0, 7), (2.5, 3)])
def test_leiden_equals_scanpy_on_same_graph_and_seed(blobs, resolution, seed):
    _, adata = blobs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.leiden(adata, resolution=resolution, random_state=seed, flavor="leidenalg", n_iterations=-1,
                     directed=True)
    theirs = adata.obs["leiden"].astype(int).to_numpy()
    ours = leiden(adata.obsp["connectivities"], resolution, seed)
    assert np.array_equal(ours, theirs)
    assert np.unique(ours).size >= 2


def test_nested_levels_are_unions_of_fine_clusters(blobs):
    x, _ = blobs
    strata = stratify(x, n_strata=(2, 4, 6), n_fine=16, n_neighbors=15, min_size=8, seed=0)
    assert strata.n_fine >= 12 and np.bincount(strata.fine).min() >= 8
    for k in (2, 4, 6):
        cells = strata.cell_labels(k)
        assert np.unique(cells).size == k
        for f in range(strata.n_fine):   # every fine cluster lies inside one stratum
            assert np.unique(cells[strata.fine == f]).size == 1
        assert np.bincount(cells).min() >= 8
    # the four blobs are recovered at 4 strata (adjusted Rand index)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(np.repeat(np.arange(4), 90), strata.cell_labels(4)) > 0.9


def test_slider_level_off_grid_equals_grid_level(blobs):
    """A level added later (a slider position off the grid) is the one stratify would have computed."""
    x, _ = blobs
    on_grid = stratify(x, n_strata=(3, 5), n_fine=16, n_neighbors=15, min_size=8, seed=0)
    later = add_level(stratify(x, n_strata=(3,), n_fine=16, n_neighbors=15, min_size=8, seed=0), 5)
    assert np.array_equal(on_grid.assignment(5), later.assignment(5))
    with pytest.raises(KeyError, match="no stratification with 7 strata"):
        on_grid.assignment(7)


def test_too_few_cells_for_the_graph_is_a_clear_error():
    with pytest.raises(ValueError, match="lower cssi.n_neighbors"):
        knn(np.zeros((5, 3)), 15)
