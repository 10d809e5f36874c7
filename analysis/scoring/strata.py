"""Cell-state strata for CSSI (paper section 4.2, Supplementary Note 11): kNN graph + Leiden, scanpy conventions.

Graph: exact Euclidean k nearest neighbours (the cell itself counted among them, as ``sc.pp.neighbors``), weighted
by UMAP's fuzzy simplicial set (``method="umap"``: per-cell ``rho`` and ``sigma`` from a binary search so the
membership strengths sum to ``log2(k)``, then the fuzzy union ``A + A.T - A * A.T``). Clustering: leidenalg's
``RBConfigurationVertexPartition`` on the directed weighted graph, ``n_iterations=-1``, seeded: ``sc.tl.leiden``'s
defaults (``flavor="leidenalg"``).

Nested design (so per-stratum attention never needs a forward pass per slider position): cells are first cut into
``n_fine`` fine clusters; every coarser stratification is Leiden on the *aggregated* fine-cluster graph
(``W = M^T A M``, self-loops kept). On a directed graph that aggregate has exactly the modularity of the induced cell
partitions, so each coarse stratification is Leiden's own objective restricted to unions of fine clusters, and any
quantity that is a sum over cells (attention, co-occurrence counts) is a sum over fine clusters. A target number of
strata is met by the smallest resolution reaching it, then merging the weakest-linked smallest stratum; strata below
``min_size`` cells are merged into their most strongly connected neighbour.

Every dependency is imported with the module, never inside a function: the app runs this module in request threads
while Dash forks background jobs from the same server, and a fork while another thread holds a module's import lock
leaves the child waiting on that lock forever (seen: a CSSI level job stuck importing leidenalg).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import igraph as ig
import leidenalg
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from ..io.schemas import CSSI_STRATA

SMOOTH_K_TOLERANCE = 1e-5   # umap.umap_ constants
MIN_K_DIST_SCALE = 1e-3


def knn(x: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean neighbours of each row of ``x`` ``[n, d]``: indices and distances ``[n, n_neighbors]``, the
    row itself first (distance 0)."""
    if x.shape[0] <= n_neighbors:
        raise ValueError(f"{x.shape[0]} cells cannot have {n_neighbors} neighbours; lower cssi.n_neighbors")
    nn = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute", metric="euclidean").fit(x)
    dist, idx = nn.kneighbors(x)
    return idx, dist


def _smooth_knn(dist: np.ndarray, n_iter: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """UMAP's ``smooth_knn_dist`` (local_connectivity=1, bandwidth=1), vectorised over cells: ``sigma``, ``rho``."""
    n, k = dist.shape
    target = np.log2(k)
    positive = np.where(dist > 0, dist, np.inf)
    rho = np.where(np.isfinite(positive.min(axis=1)), positive.min(axis=1), 0.0)
    d = dist[:, 1:] - rho[:, None]
    lo, hi, mid = np.zeros(n), np.full(n, np.inf), np.ones(n)
    active = np.ones(n, dtype=bool)
    for _ in range(n_iter):
        psum = np.where(d > 0, np.exp(-d / mid[:, None]), 1.0).sum(axis=1)
        active &= np.abs(psum - target) >= SMOOTH_K_TOLERANCE
        if not active.any():
            break
        above = active & (psum > target)
        below = active & ~(psum > target)
        hi = np.where(above, mid, hi)
        lo = np.where(below, mid, lo)
        halfway = np.where(np.isinf(hi), mid * 2, (lo + hi) / 2)
        mid = np.where(active, halfway, mid)
    floor = np.where(rho > 0, MIN_K_DIST_SCALE * dist.mean(axis=1), MIN_K_DIST_SCALE * dist.mean())
    return np.maximum(mid, floor), rho


def umap_connectivities(idx: np.ndarray, dist: np.ndarray) -> sp.csr_matrix:
    """Symmetric fuzzy-union connectivities ``[n, n]`` from a kNN result (``sc.pp.neighbors(method="umap")``)."""
    n, k = idx.shape
    sigma, rho = _smooth_knn(dist)
    with np.errstate(over="ignore"):
        w = np.exp(-np.maximum(dist - rho[:, None], 0.0) / sigma[:, None])
    w[idx == np.arange(n)[:, None]] = 0.0
    a = sp.csr_matrix((w.ravel(), (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, n))
    a.eliminate_zeros()
    prod = a.multiply(a.T)
    return (a + a.T - prod).tocsr()


def leiden(adjacency: sp.spmatrix, resolution: float, seed: int) -> np.ndarray:
    """Leiden labels ``[n]`` (0 = largest community) exactly as ``sc.tl.leiden(flavor="leidenalg")`` computes them
    for this adjacency, resolution and ``random_state``."""
    coo = sp.csr_matrix(adjacency)
    src, dst = coo.nonzero()
    weights = np.asarray(coo[src, dst]).ravel().astype(np.float64)
    g = ig.Graph(directed=True)
    g.add_vertices(coo.shape[0])
    g.add_edges(list(zip(src.tolist(), dst.tolist())))
    part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition, weights=weights,
                                    resolution_parameter=resolution, n_iterations=-1, seed=seed)
    return np.asarray(part.membership, dtype=np.int64)


def aggregate(adjacency: sp.spmatrix, labels: np.ndarray, n_groups: int) -> np.ndarray:
    """``[n_groups, n_groups]`` summed edge weight between groups (``M^T A M``; diagonal = within-group weight)."""
    m = sp.csr_matrix((np.ones(labels.size), (np.arange(labels.size), labels)), shape=(labels.size, n_groups))
    return np.asarray((m.T @ adjacency @ m).todense())


def _merge_weakest(groups: np.ndarray, weights: np.ndarray, sizes: np.ndarray, min_size: int,
                   n_target: int | None) -> np.ndarray:
    """Relabel ``groups`` (stratum of each fine cluster): while a stratum is smaller than ``min_size`` (or there are
    more than ``n_target``), merge the smallest into the stratum it shares the most edge weight with. Strata are
    then numbered by decreasing size."""
    groups = groups.copy()
    while True:
        ids = np.unique(groups)
        if ids.size <= 1:
            break
        size = np.array([sizes[groups == i].sum() for i in ids])
        small = size.argmin()
        if size[small] >= min_size and (n_target is None or ids.size <= n_target):
            break
        member = groups == ids[small]
        link = np.array([weights[np.ix_(member, groups == j)].sum() if j != ids[small] else -np.inf for j in ids])
        groups[member] = ids[int(link.argmax())]
    order = {g: r for r, g in enumerate(sorted(np.unique(groups), key=lambda g: (-sizes[groups == g].sum(), g)))}
    return np.array([order[g] for g in groups], dtype=np.int64)


@dataclass(frozen=True)
class Stratification:
    """Nested strata. ``fine``: ``[n_cells]`` fine-cluster label; ``levels``: one row per (n_strata, fine_cluster)
    with its ``stratum`` (schema ``cssi_strata``) and the Leiden ``resolution`` that produced it; ``layout``:
    ``[n_cells, 2]`` 2-D coordinates for display (first two principal components of the representation);
    ``fine_graph``: ``[n_fine, n_fine]`` aggregated connectivities; ``params``: graph and clustering settings, seeds."""

    fine: np.ndarray
    levels: pd.DataFrame
    layout: np.ndarray
    fine_graph: np.ndarray
    params: dict

    @property
    def n_fine(self) -> int:
        return int(self.fine.max()) + 1

    def assignment(self, n_strata: int) -> np.ndarray:
        """``[n_fine]`` stratum of each fine cluster at ``n_strata``."""
        rows = self.levels[self.levels["n_strata"] == n_strata].sort_values("fine_cluster")
        if rows.empty:
            raise KeyError(f"no stratification with {n_strata} strata (available: "
                           f"{sorted(self.levels['n_strata'].unique())})")
        return rows["stratum"].to_numpy()

    def cell_labels(self, n_strata: int) -> np.ndarray:
        """``[n_cells]`` stratum of each cell at ``n_strata``."""
        return self.assignment(n_strata)[self.fine]


def coarse_level(weights: np.ndarray, sizes: np.ndarray, n_strata: int, *, min_size: int, seed: int,
                 max_resolution: float) -> tuple[np.ndarray, float]:
    """Fine-cluster -> stratum map with exactly ``n_strata`` strata (or fewer when ``min_size`` forbids it) and the
    resolution used: bisection (log scale) for the smallest resolution whose Leiden partition of the aggregated
    graph has at least ``n_strata`` strata, then :func:`_merge_weakest`."""
    if n_strata >= sizes.size:
        groups, res = np.arange(sizes.size), max_resolution
    else:
        lo, hi = np.log(1e-4), np.log(max_resolution)
        groups = leiden(sp.csr_matrix(weights), max_resolution, seed)
        res = max_resolution
        for _ in range(30):
            mid = (lo + hi) / 2
            trial = leiden(sp.csr_matrix(weights), float(np.exp(mid)), seed)
            if np.unique(trial).size >= n_strata:
                groups, res, hi = trial, float(np.exp(mid)), mid
            else:
                lo = mid
            if hi - lo < 1e-3:
                break
    return _merge_weakest(groups, weights, sizes, min_size, n_strata), res


def stratify(representation: np.ndarray, *, n_strata: tuple[int, ...], n_fine: int, n_neighbors: int,
             min_size: int, seed: int, n_pcs: int = 50) -> Stratification:
    """Fine clusters and nested strata for every requested number of strata (see module doc).

    ``representation``: ``[n_cells, d]`` (model cell embeddings or expression); PCA to ``n_pcs`` components when
    ``d > n_pcs`` (at most cells - 1). Fine clusters: Leiden on the cell graph, the resolution raised from 1 (by the ratio of wanted to
    found clusters, at least 1.25x) until there are ``>= n_fine`` clusters, those under ``min_size`` cells then merged into neighbours.
    """
    x = np.asarray(representation, dtype=np.float64)
    n_pcs = min(n_pcs, x.shape[0] - 1)   # PCA cannot give more components than cells - 1
    if x.shape[1] > n_pcs:
        x = PCA(n_components=n_pcs, random_state=seed).fit_transform(x)
    idx, dist = knn(x, n_neighbors)
    conn = umap_connectivities(idx, dist)
    resolution = 1.0
    fine = leiden(conn, resolution, seed)
    while np.unique(fine).size < n_fine and resolution < 256:
        resolution *= max(1.25, n_fine / np.unique(fine).size)
        fine = leiden(conn, resolution, seed)
    n_raw = int(fine.max()) + 1
    fine = _merge_weakest(np.arange(n_raw), aggregate(conn, fine, n_raw), np.bincount(fine), min_size, None)[fine]
    n_fine_found = int(fine.max()) + 1
    weights = aggregate(conn, fine, n_fine_found)
    layout = PCA(n_components=2, random_state=seed).fit_transform(x) if x.shape[1] > 2 else x
    params = {"n_neighbors": n_neighbors, "n_pcs": int(x.shape[1]), "min_size": min_size, "seed": seed,
              "fine_resolution": resolution, "n_fine": n_fine_found, "graph": "exact kNN + UMAP connectivities",
              "clustering": "leidenalg RBConfigurationVertexPartition, directed, n_iterations=-1"}
    strata = Stratification(fine, pd.DataFrame(columns=list(CSSI_STRATA[0])), layout, weights, params)
    for k in sorted(set(n_strata)):
        strata = add_level(strata, k)
    return strata


def add_level(strata: Stratification, n_strata: int) -> Stratification:
    """A copy of ``strata`` with a level of ``n_strata`` strata added (slider positions off the precomputed grid)."""
    if (strata.levels["n_strata"] == n_strata).any():
        return strata
    sizes = np.bincount(strata.fine, minlength=strata.n_fine)
    groups, res = coarse_level(strata.fine_graph, sizes, n_strata, min_size=strata.params["min_size"],
                               seed=strata.params["seed"], max_resolution=strata.params["fine_resolution"])
    extra = pd.DataFrame({"n_strata": n_strata, "n_found": int(np.unique(groups).size),
                          "fine_cluster": np.arange(groups.size), "stratum": groups, "resolution": res})
    levels = extra if strata.levels.empty else pd.concat([strata.levels, extra], ignore_index=True)
    return Stratification(strata.fine, levels, strata.layout, strata.fine_graph, strata.params)
