"""ArtifactStore: the only way the UI reads a run. Read-only, memoised, and confined to ``cache/artifacts``:
a run id that is not the name of a complete run directory there is refused, so no request reaches another path.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.errors import SchemaError
from analysis.io import files, schemas
from analysis.io.artifacts import RUN_ID, links_inside, read_manifest, scan_runs, sha256_path
from analysis.io.manifest import RunManifest
from analysis.scoring.cssi_levels import CSSIRun, load_cssi
from analysis.io.stores import AttentionStore
from analysis.scoring.edges import (CORRELATION_EDGE_TYPES, EdgeScores, HeadEdges, mean_scores,
                                    panel_positions)
from analysis.scoring.edges import head_edges as store_heads
from analysis.scoring.sae_features import (activation_correlation, cell_feature_activity, feature_gene_means,
                                           gene_set_enrichment, latent_matrix, top_genes)
from analysis.scoring.strata import add_level


class RunNotFound(LookupError):
    pass


class DamagedFile(RunNotFound):
    """A file of a finished run that differs from what its manifest recorded (sha256 or size)."""


class ArtifactStore:
    def __init__(self, cache_dir: Path):
        self.root = (Path(cache_dir) / "artifacts").resolve()

    def runs(self) -> tuple[list[RunManifest], list[str]]:
        """Manifests of the runs that can be opened (newest first), and one line per run directory skipped."""
        return scan_runs(self.root.parent)

    def run_dir(self, run_id: str) -> Path:
        if not run_id or not RUN_ID.match(run_id) or run_id.endswith(".partial"):
            raise RunNotFound(f"not a run id: {run_id!r}")
        path = (self.root / run_id).resolve()
        if path.parent != self.root or not (path / files.MANIFEST).is_file():
            raise RunNotFound(f"no complete run {run_id!r} in {self.root}")
        if links := self._links(run_id):
            raise RunNotFound(f"run {run_id!r} holds symbolic links ({', '.join(links[:3])}); the app reads only "
                              "regular files inside a run: remove the links or precompute the run again")
        return path

    @lru_cache(maxsize=256)
    def _links(self, run_id: str) -> tuple[str, ...]:
        """The symbolic links inside a run (:func:`analysis.io.artifacts.links_inside`), looked for once per run."""
        return tuple(links_inside(self.root / run_id))

    @lru_cache(maxsize=32)
    def manifest(self, run_id: str) -> RunManifest:
        """The run's typed manifest; a malformed one is :class:`RunNotFound` (the run cannot be opened)."""
        try:
            return read_manifest(self.run_dir(run_id))
        except SchemaError as exc:
            raise RunNotFound(f"run {run_id!r} cannot be opened: {exc}") from exc

    @lru_cache(maxsize=1024)
    def verified(self, run_id: str, relative: str, *, full: bool = True) -> Path:
        """The path of a run's file once it matches its manifest entry: the sha256 (``full``, on the first read of
        a table) or the size (the large memory-mapped arrays, whose pages are read on demand); a file that differs
        is :class:`DamagedFile`, naming it and the fix, instead of a failed read deep in a page."""
        path = self.run_dir(run_id) / relative
        entry = self.manifest(run_id).files.get(relative)
        if entry is None or not path.is_file():
            return path
        damage = None
        if path.stat().st_size != entry["bytes"]:
            damage = f"{path.stat().st_size:,} bytes where the manifest recorded {entry['bytes']:,}"
        elif full and sha256_path(path) != entry["sha256"]:
            damage = "its sha256 differs from the manifest's"
        if damage:
            raise DamagedFile(f"run {run_id}: {relative} is damaged ({damage}); precompute the run again "
                              "(its other files are not read)")
        return path

    @lru_cache(maxsize=64)
    def table(self, run_id: str, name: str) -> pd.DataFrame:
        """``<name>.parquet`` of a run (checked against the manifest on first read), validated against its schema
        when one is declared."""
        frame = pd.read_parquet(self.verified(run_id, files.table(name)))
        return schemas.validate(name, frame) if name in schemas.TABLES else frame

    def has_table(self, run_id: str, name: str) -> bool:
        return (self.run_dir(run_id) / files.table(name)).is_file()

    def ranking(self, run_id: str) -> pd.DataFrame:
        return self.table(run_id, "head_ranking")

    def panel(self, run_id: str) -> pd.DataFrame:
        return self.table(run_id, "panel")

    def reference_edges(self, run_id: str) -> pd.DataFrame:
        return self.table(run_id, "reference_edges")

    def pair_counts(self, run_id: str) -> np.ndarray:
        """``[G, G]`` cells in which both panel genes were in the input (memory-mapped)."""
        return self.attention(run_id).counts

    @lru_cache(maxsize=4)
    def cssi(self, run_id: str) -> CSSIRun:
        """The run's CSSI inputs (stratification + memory-mapped group sums); KeyError when the run has none."""
        if not self.has_table(run_id, "cssi_curve"):
            raise KeyError(f"run {run_id} has no CSSI results (cssi.n_fine = 0 when it was computed)")
        return load_cssi(self.run_dir(run_id))

    @lru_cache(maxsize=128)
    def cssi_assignment(self, run_id: str, n_strata: int) -> np.ndarray:
        """``[F]`` stratum of each fine cluster at ``n_strata`` (Leiden on the fine-cluster graph when off the
        precomputed grid; milliseconds)."""
        return add_level(self.cssi(run_id).strata, n_strata).assignment(n_strata)

    @lru_cache(maxsize=8)
    def attention(self, run_id: str) -> AttentionStore:
        """The run's pooled attention store, memory-mapped: a view reads only the rows and blocks it indexes (its
        arrays' sizes checked against the manifest first)."""
        for relative in self.manifest(run_id).files:
            if relative.endswith(".npy"):
                self.verified(run_id, relative, full=False)
        return AttentionStore.load(self.run_dir(run_id))

    def head_edges(self, run_id: str) -> HeadEdges:
        """Every head of the run at its source genes (:class:`analysis.scoring.edges.HeadEdges`), memory-mapped."""
        return store_heads(self.attention(run_id))          # views: no layer means computed

    def head_scores(self, run_id: str, layer: int, head: int, rows: np.ndarray, direction: str) -> np.ndarray:
        """``[len(rows), G]`` mean attention of one head (head = -1: the layer's head mean) for the panel ``rows``
        under ``direction``; a KeyError says when a row's per-head attention was not kept."""
        store = self.attention(run_id)
        if not (0 <= layer < store.n_layers and -1 <= head < store.n_heads):
            raise KeyError(f"run {run_id} has no attention for layer {layer} head {head}")
        if head < 0:
            rows = np.asarray(rows, dtype=np.int64)
            counts = np.asarray(store.counts)
            forward = mean_scores(store.layer_sums[layer][rows], counts[rows])
            if direction == "tf_to_target":
                return forward
            backward = mean_scores(np.asarray(store.layer_sums[layer][:, rows]).T, counts[rows])
            return backward if direction == "target_to_tf" else (forward + backward) / 2
        return self.head_edges(run_id).head(layer, head).oriented(rows, direction)[0]

    @lru_cache(maxsize=8)
    def layer_edges(self, run_id: str, symbols: tuple[str, ...]) -> EdgeScores:
        """Every layer's head-mean attention and the Spearman edges over the genes ``symbols`` (each in the panel),
        ``[layers + 1, n, n]``: only those blocks of the memory-mapped arrays are read, so a 2,500-gene run costs
        the shared genes' blocks, not every layer's full ``[G, G]``. Observed where the pair was co-observed."""
        panel = self.panel(run_id)
        idx = panel_positions(panel, list(symbols))
        block = np.ix_(idx, idx)
        store = self.attention(run_id)
        counts = np.asarray(store.counts[block])
        spearman = np.load(self.run_dir(run_id) / files.EDGES_SPEARMAN, mmap_mode="r")
        scores = np.stack([mean_scores(store.layer_sums[layer][block], counts) for layer in range(store.n_layers)]
                          + [np.asarray(spearman[0][block], dtype=np.float64)])
        sources = pd.DataFrame({"edge_type": ["attention_layer_mean"] * store.n_layers + ["spearman"],
                                "layer": list(range(store.n_layers)) + [-1], "head": -1})
        return EdgeScores(scores, sources, counts > 0, panel.iloc[idx].reset_index(drop=True), {})

    @lru_cache(maxsize=16)
    def gene_edges(self, run_id: str, symbol: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, bool]:
        """(attention sources, ``[S, G]`` attention of ``symbol`` as query over every key gene, ``[S, G]`` attention on
        ``symbol`` as key from every query gene, whether its per-head attention was kept). The sources are every
        layer's head mean, then every head when ``symbol`` is a source gene of the store (reference TF, perturbed or
        asked for); the store keeps per-head rows for those only, and per-head columns for TFs and asked genes only
        (a perturbed gene's head columns are NaN)."""
        panel = self.panel(run_id)
        g = np.array([int(np.nonzero(panel["symbol"].to_numpy() == symbol)[0][0])])
        store = self.attention(run_id)
        layers = range(store.n_layers)
        sources = pd.DataFrame({"edge_type": "attention_layer_mean", "layer": list(layers), "head": -1})
        rows = [self.head_scores(run_id, layer, -1, g, "tf_to_target")[0] for layer in layers]
        cols = [self.head_scores(run_id, layer, -1, g, "target_to_tf")[0] for layer in layers]
        kept = int(g[0]) in set(store.source_rows.tolist())
        if kept:
            heads = self.head_edges(run_id)
            sources = pd.concat([sources, heads.sources], ignore_index=True)
            rows += list(heads.oriented(g, "tf_to_target")[:, 0])
            if int(g[0]) in set(heads.column_rows.tolist()):
                cols += list(heads.oriented(g, "target_to_tf")[:, 0])
            else:                                 # a perturbed gene: its row only (it plays the regulator)
                cols += [np.full(len(panel), np.nan)] * len(heads.sources)
        return sources, np.array(rows), np.array(cols), kept

    def replication_context(self, run_id: str) -> dict | None:
        """A run as :func:`analysis.scoring.replication.replicate` reads it (its perturbation-first table, primary
        correlation edge, read-out layer and depth), or None without a perturbation screen."""
        if not self.has_table(run_id, "perturbation_auroc"):
            return None
        m = self.manifest(run_id)
        return {"per_pert": self.table(run_id, "perturbation_auroc"), "n_layers": m.model.n_layers,
                "readout_layer": m.readout_layer,
                "correlation_edge": CORRELATION_EDGE_TYPES[m.config.perturbation.correlation_edge]}

    @lru_cache(maxsize=8)
    def sae_rows(self, run_id: str) -> dict[str, np.ndarray]:
        """The run's ``sae_rows.npz`` (:data:`analysis.io.files.SAE_ROWS`: where each latent row was read, the genes'
        symbols, the captured cells and their states), read once."""
        with np.load(self.run_dir(run_id) / files.SAE_ROWS) as rows:
            return {name: rows[name] for name in rows.files}

    @lru_cache(maxsize=16)
    def sae_latent_arrays(self, run_id: str, layer: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(``[rows, k]`` active feature indices, their values, the number of features) of the SAE of ``layer``, read
        once; KeyError when the run has no SAE of that layer."""
        path = self.run_dir(run_id) / files.sae_latents(layer)
        if not path.is_file():
            raise KeyError(f"run {run_id} has no SAE of layer {layer}")
        sizes = self.table(run_id, "sae_layers").set_index("layer")["n_features"]
        with np.load(path) as latents:
            return latents["indices"], latents["values"], int(sizes[layer])

    @lru_cache(maxsize=8)
    def sae_gene_means(self, run_id: str, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(``[F, G]`` each SAE feature of ``layer`` averaged over each gene's captured positions, ``[G]`` the genes'
        symbols), from the run's sparse latents; KeyError when the run has no SAE of that layer."""
        indices, values, n_features = self.sae_latent_arrays(run_id, layer)
        rows = self.sae_rows(run_id)
        symbols = rows["gene_symbol"]
        means, _ = feature_gene_means(indices, values, rows["row_gene"], symbols.size, n_features)
        return means, symbols

    @lru_cache(maxsize=16)
    def sae_latents(self, run_id: str, layer: int):
        """``[rows, F]`` sparse activations of the SAE of ``layer`` at every captured row (the same rows, in the same
        order, for every layer of a run); KeyError when the run has no SAE of that layer."""
        return latent_matrix(*self.sae_latent_arrays(run_id, layer))

    @lru_cache(maxsize=8)
    def sae_cell_activity(self, run_id: str, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(``[captured cells, F]`` each feature's mean activation over each captured cell's gene positions,
        ``[captured cells]`` their cell states, "" without a cell-state column); KeyError when the run has no SAE of
        that layer."""
        indices, values, n_features = self.sae_latent_arrays(run_id, layer)
        rows = self.sae_rows(run_id)
        cells = rows["capture_cell"]
        activity = cell_feature_activity(indices, values, np.searchsorted(cells, rows["row_cell"]), cells.size,
                                         n_features)
        return activity, rows["capture_state"]

    def sae_feature_positions(self, run_id: str, layer: int, feature: int) -> pd.DataFrame:
        """Every captured gene position where ``feature`` fired: ``cell`` (captured-cell index), ``state`` (its cell
        state, "" without one), ``symbol`` and ``activation``."""
        column = self.sae_latents(run_id, layer)[:, feature].tocoo()
        keep = column.data > 0
        row, values = column.row[keep], column.data[keep]
        rows = self.sae_rows(run_id)
        cells = np.searchsorted(rows["capture_cell"], rows["row_cell"][row])
        return pd.DataFrame({"cell": cells, "state": rows["capture_state"][cells],
                             "symbol": rows["gene_symbol"][rows["row_gene"][row]], "activation": values})

    def sae_state_enrichment(self, run_id: str, layer: int, feature: int, top_share: float = 0.1) -> pd.DataFrame:
        """Cell states over-represented among the ``top_share`` of captured cells where ``feature`` is most active
        (cells where it is silent left out): hypergeometric over the captured cells, BH over the states
        (:func:`analysis.scoring.sae_features.gene_set_enrichment` with cells as the items)."""
        activity, states = self.sae_cell_activity(run_id, layer)
        column = activity[:, feature]
        names = sorted(set(states) - {""})
        if not names or not (column > 0).any():
            return pd.DataFrame(columns=["feature", "gene_set", "overlap", "feature_genes", "set_genes", "universe",
                                         "fold", "p", "q"])
        n_top = max(1, int(round(top_share * column.size)))
        top = np.zeros(column.size, dtype=bool)
        top[np.argsort(-column, kind="stable")[:n_top]] = True
        top &= column > 0
        sets = np.array([states == name for name in names])
        return gene_set_enrichment(top[None, :], sets, np.ones(column.size, dtype=bool), [f"cell state {n}"
                                                                                         for n in names])

    def sae_neighbours(self, run_id: str, layer: int, feature: int, n: int = 3) -> pd.DataFrame:
        """The ``n`` features of every other layer whose activations correlate most with ``feature``'s over the same
        gene positions (the cross-layer flow the companion paper calls highways): layer, feature, r."""
        column = self.sae_latents(run_id, layer)[:, [feature]]
        rows = []
        for other in self.table(run_id, "sae_layers")["layer"]:
            if int(other) == layer:
                continue
            r = activation_correlation(column, self.sae_latents(run_id, int(other)))[0]
            for f in np.argsort(-np.nan_to_num(r, nan=-np.inf), kind="stable")[:n]:
                rows.append((int(other), int(f), float(r[f])))
        return pd.DataFrame(rows, columns=["layer", "feature", "r"])

    @lru_cache(maxsize=8)
    def sae_enrichment(self, run_id: str, layer: int, n_genes: int, min_targets: int = 3) -> pd.DataFrame:
        """Every feature of ``layer`` (its ``n_genes`` genes of highest mean activation) against every reference TF's
        regulon and every gene's neighbourhood in the run's pair references (STRING; the embedded default's
        co-regulation pairs) and every gene set of the run's ``--gene-sets`` collections, with at least
        ``min_targets`` members among the captured genes: hypergeometric
        over-representation over the genes the captured cells hold, BH over the layer's features x sets
        (:func:`analysis.scoring.sae_features.gene_set_enrichment`); sets named ``<reference>: <TF> regulon``,
        ``<reference>: neighbours of <gene>`` and ``<collection>: <set>``."""
        means, symbols = self.sae_gene_means(run_id, layer)
        observed = (means > 0).any(axis=0)
        index = {s: i for i, s in enumerate(symbols)}
        groups = [(f"{ref}: {tf} regulon", grp["target"])
                  for (ref, tf), grp in self.reference_edges(run_id).groupby(["reference", "tf"], sort=True)]
        collections = set()
        if self.has_table(run_id, "gene_set_members"):          # --gene-sets: annotate by the sets themselves
            members = self.table(run_id, "gene_set_members")
            collections = set(members["collection"])
            groups += [(f"{collection}: {name}", grp["gene"])
                       for (collection, name), grp in members.groupby(["collection", "gene_set"], sort=True)]
        if self.has_table(run_id, "pair_reference_edges"):
            pairs = self.table(run_id, "pair_reference_edges")
            pairs = pairs[~pairs["reference"].isin(collections)]     # a set's co-members are not a neighbourhood
            both = pd.concat([pairs[["reference", "tf", "target"]],
                              pairs.rename(columns={"tf": "target", "target": "tf"})[["reference", "tf", "target"]]])
            groups += [(f"{ref}: neighbours of {gene}", grp["target"])
                       for (ref, gene), grp in both.groupby(["reference", "tf"], sort=True)]
        sets, names = [], []
        for name, members in groups:
            found = sorted({index[t] for t in members if t in index and observed[index[t]]})
            if len(found) >= min_targets:
                row = np.zeros(symbols.size, dtype=bool)
                row[found] = True
                sets.append(row)
                names.append(name)
        if not sets:
            return pd.DataFrame(columns=["feature", "gene_set", "overlap", "feature_genes", "set_genes", "universe",
                                         "fold", "p", "q"])
        return gene_set_enrichment(top_genes(means, n_genes), np.array(sets), observed, names)


def reference_tf_rows(panel: pd.DataFrame, reference_edges: pd.DataFrame, reference: str) -> np.ndarray:
    """Panel rows of the TFs of ``reference`` (sorted)."""
    ref = reference_edges[reference_edges["reference"] == reference]
    return np.nonzero(np.isin(panel["symbol"].to_numpy(), ref["tf"].unique()))[0].astype(np.int64)


def head_view(scores: np.ndarray, tf_rows: np.ndarray, counts: np.ndarray, panel: pd.DataFrame,
              reference_edges: pd.DataFrame, *, reference: str, n_rows: int, n_cols: int, n_edges: int
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the per-head view draws: the top ``n_rows`` reference TFs (by attention mass to other panel genes) x
    top ``n_cols`` genes, as a tidy block, and the ``n_edges`` highest-scoring (TF, gene) pairs with reference
    hits marked. ``scores``: ``[n_tf, G]`` one head's scores of (TF, gene) under the direction on screen
    (:meth:`ArtifactStore.head_scores` of ``tf_rows``, from :func:`reference_tf_rows`)."""
    symbols = panel["symbol"].to_numpy()
    ref = reference_edges[reference_edges["reference"] == reference]
    if tf_rows.size == 0:
        return (pd.DataFrame(columns=["row_gene", "col_gene", "score", "in_reference"]),
                pd.DataFrame(columns=["tf", "target", "score", "n_cells", "in_reference", "mode"]))
    scores = np.array(scores, dtype=np.float64)
    scores[np.arange(tf_rows.size), tf_rows] = np.nan
    mode = {(a, b): m for a, b, m in zip(ref["tf"], ref["target"], ref["mode"])}
    mass = np.nan_to_num(scores).sum(axis=1)
    rows = np.argsort(-mass, kind="stable")[:n_rows]
    cols = np.argsort(-np.nan_to_num(scores[rows]).sum(axis=0), kind="stable")[:n_cols]
    block = pd.DataFrame([(symbols[tf_rows[r]], symbols[c], float(scores[r, c]),
                           (symbols[tf_rows[r]], symbols[c]) in mode) for r in rows for c in cols],
                         columns=["row_gene", "col_gene", "score", "in_reference"])
    flat = np.nan_to_num(scores, nan=-np.inf).ravel()
    top = np.argsort(-flat, kind="stable")[:n_edges]
    r_idx, c_idx = np.unravel_index(top, scores.shape)
    edges = pd.DataFrame({
        "tf": symbols[tf_rows[r_idx]], "target": symbols[c_idx], "score": scores[r_idx, c_idx],
        "n_cells": np.asarray(counts)[tf_rows[r_idx], c_idx],
    })
    edges["mode"] = [mode.get((a, b), "") for a, b in zip(edges["tf"], edges["target"])]
    edges["in_reference"] = edges["mode"] != ""
    return block, edges[np.isfinite(edges["score"])]
