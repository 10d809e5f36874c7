"""A finished run's networks out (analysis.scoring.networks, analysis.io.network_files) on the embedded default at
test size: each source's edges are the stored attention (or correlation) recomputed by hand from the run's own
arrays, each regulator keeps its strongest co-observed targets, reference edges are marked, and every file format
is read back by the library users read it with (pandas, networkx's GraphML and Cytoscape JSON readers)."""
from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from analysis.errors import InputError
from analysis.io.network_files import write_network
from analysis.scoring.networks import COLUMNS, run_network


def _hand(run_dir, source: str, regulator: str, top: int) -> pd.Series:
    """The ``top`` targets of ``regulator`` by hand: the stored sums over cells / co-observed cells."""
    panel = pd.read_parquet(run_dir / "panel.parquet")
    rows = np.load(run_dir / "attention_source_rows.npy")
    counts = np.load(run_dir / "pair_counts.npy")
    g = int(np.nonzero(panel["symbol"].to_numpy() == regulator)[0][0])
    r = int(np.nonzero(rows == g)[0][0])
    if source == "L1H0":
        sums = np.load(run_dir / "attention_head_rows.npy")[1, 0, r]
        scores = np.where(counts[g] > 0, sums / np.maximum(counts[g], 1), np.nan)
    elif source == "L1 mean":
        sums = np.load(run_dir / "attention_layer_sums.npy")[1, g]
        scores = np.where(counts[g] > 0, sums / np.maximum(counts[g], 1), np.nan)
    else:
        scores = np.where(counts[g] > 0, np.load(run_dir / "edges_spearman.npy")[0, g], np.nan)
    scores[g] = np.nan
    return pd.Series(scores, index=panel["symbol"]).dropna().sort_values(ascending=False, kind="stable").head(top)


@pytest.mark.parametrize("source", ["L1H0", "L1 mean", "spearman"])
def test_each_source_is_the_stored_scores_and_keeps_each_regulators_strongest_targets(embedded_cache, source):
    run_dir = embedded_cache[1]["geneformer"]
    table = run_network(run_dir, source, top=5)
    assert list(table.columns) == list(COLUMNS)
    regulator = table["source"].iloc[0]
    mine = table[table["source"] == regulator].set_index("target")["weight"]
    expected = _hand(run_dir, source, regulator, 5)
    assert list(mine.index) == list(expected.index)
    assert np.allclose(mine.to_numpy(), expected.to_numpy())
    assert table.groupby("source").size().max() == 5 and (table["n_cells"] > 0).all()
    reference = pd.read_parquet(run_dir / "reference_edges.parquet")
    known = set(zip(reference["tf"], reference["target"]))
    marked = table["references"] != ""
    assert [(s, t) in known for s, t in zip(table["source"], table["target"])] == list(marked)


def test_every_format_reads_back_with_the_library_users_read_it_with(embedded_cache, tmp_path):
    run_dir = embedded_cache[1]["scgpt"]
    table = run_network(run_dir, "L0 mean", top=4)
    back = pd.read_csv(write_network(table, tmp_path / "edges.tsv"), sep="\t", keep_default_na=False)
    assert back[["source", "target"]].equals(table[["source", "target"]])
    assert np.allclose(back["weight"], table["weight"])
    graph = nx.read_graphml(write_network(table, tmp_path / "edges.graphml"))
    assert graph.number_of_edges() == len(table)
    first = table.iloc[0]
    assert graph.edges[first["source"], first["target"]]["weight"] == pytest.approx(first["weight"])
    assert graph.nodes[first["source"]]["regulator"] is True
    cy = nx.cytoscape_graph(json.loads(write_network(table, tmp_path / "edges.cyjs").read_text()))
    assert cy.number_of_edges() == len(table) and cy.is_directed()
    assert not list(tmp_path.glob("*.partial"))


def test_a_source_the_run_lacks_or_a_wrong_format_is_named(embedded_cache, tmp_path):
    run_dir = embedded_cache[1]["geneformer"]
    with pytest.raises(InputError, match="layers 0-1 and heads 0-3"):
        run_network(run_dir, "L7H0")
    with pytest.raises(InputError, match="name a head"):
        run_network(run_dir, "best")
    with pytest.raises(InputError, match=r"write a network as \.tsv"):
        write_network(run_network(run_dir, "spearman", top=2), tmp_path / "edges.xlsx")


def test_the_run_as_anndata_reads_back_in_scanpy_with_the_stored_matrices(embedded_cache, tmp_path):
    import scanpy as sc

    from analysis.results import open_run

    run_dir = embedded_cache[1]["geneformer"]
    run = open_run(run_dir)
    run.to_anndata(layers=(0, 1)).write_h5ad(tmp_path / "run.h5ad")
    adata = sc.read_h5ad(tmp_path / "run.h5ad")
    panel = pd.read_parquet(run_dir / "panel.parquet")
    counts = np.load(run_dir / "pair_counts.npy")
    sums = np.load(run_dir / "attention_layer_sums.npy")
    assert list(adata.var_names) == list(panel["symbol"]) and set(adata.varp) == {"attention_L0", "attention_L1",
                                                                                    "spearman"}
    seen = counts > 0
    hand = np.where(seen, sums[1] / np.maximum(counts, 1), np.nan)
    assert np.allclose(adata.varp["attention_L1"][seen], hand[seen], rtol=1e-5) and np.isnan(
        adata.varp["attention_L1"][~seen]).all()
    assert np.allclose(adata.varp["spearman"][seen], np.load(run_dir / "edges_spearman.npy")[0][seen], atol=1e-6)
    embedding = np.load(run_dir / "cell_embeddings_mean_penultimate.npy")
    assert np.allclose(adata.obsm["X_mean_penultimate"], embedding)
    assert adata.n_obs == embedding.shape[0] and "cell_state" in adata.obs
    perturbed = adata.var.loc[adata.var["is_perturbed"].astype(bool)]
    assert perturbed["on_target_status"].notna().all()
    assert json.loads(adata.uns["manifest"])["run_id"] == run_dir.name
    assert list(adata.uns["verdicts"]["key"]) == [v.key for v in run.verdicts()]


def test_a_cssi_stratums_correlation_network_is_scipys_spearman_on_that_stratums_cells(embedded_cache):
    from scipy.stats import spearmanr

    from analysis.scoring.cssi_levels import load_cssi
    from analysis.scoring.strata import add_level

    run_dir = embedded_cache[1]["geneformer"]
    table = run_network(run_dir, "spearman", top=4, stratum=(2, 1))
    run = load_cssi(run_dir)
    cells = add_level(run.strata, 2).assignment(2)[run.source.fine] == 1
    expression = np.load(run_dir / "cssi_expression.npy")[cells]
    column = {s: i for i, s in enumerate(pd.read_parquet(run_dir / "panel.parquet")["symbol"])}   # [cells, G]
    regulator = table["source"].iloc[0]
    mine = table[table["source"] == regulator].set_index("target")["weight"]
    rho = [spearmanr(expression[:, column[regulator]], expression[:, column[t]]).statistic for t in mine.index]
    assert np.allclose(mine.to_numpy(), rho)
    whole = run_network(run_dir, "spearman", top=4)
    assert not whole[["source", "target"]].equals(table[["source", "target"]])     # the stratum changes the network
    with pytest.raises(InputError, match="stratum 5 of 2"):
        run_network(run_dir, "spearman", stratum=(2, 5))
