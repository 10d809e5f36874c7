"""A network table (``source, target, weight`` and edge attributes, as :func:`analysis.scoring.networks.run_network`
makes it) written where users take networks: ``.tsv`` / ``.csv`` (decoupler, geneRNIB), ``.graphml`` (networkx,
igraph, Gephi, Cytoscape) and ``.cyjs`` (Cytoscape.js JSON, which Cytoscape desktop imports), nodes marked as
regulators or targets. Written to a temporary name and moved into place, so a failed write leaves nothing."""
from __future__ import annotations

import json
import os
from pathlib import Path

import networkx as nx
import pandas as pd

from ..errors import InputError

SUFFIXES = (".tsv", ".csv", ".graphml", ".cyjs")


def network_graph(table: pd.DataFrame) -> nx.DiGraph:
    """The table as a directed graph: one node per gene (``regulator``: it is a source), one edge per row with every
    column but source and target as an attribute."""
    graph = nx.DiGraph()
    regulators = set(table["source"])
    for gene in pd.unique(pd.concat([table["source"], table["target"]])):
        graph.add_node(str(gene), name=str(gene), regulator=gene in regulators)
    attributes = [c for c in table.columns if c not in ("source", "target")]
    for row in table.itertuples(index=False):
        values = row._asdict()
        graph.add_edge(str(values["source"]), str(values["target"]),
                       **{c: _plain(values[c]) for c in attributes})
    return graph


def _plain(value):
    """A value GraphML and JSON can hold (numpy scalars become Python's)."""
    return value.item() if hasattr(value, "item") else value


def write_network(table: pd.DataFrame, path: str | Path) -> Path:
    """Write ``table`` in the format its suffix names (:data:`SUFFIXES`); the path written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{path.name}: write a network as {', '.join(SUFFIXES)}")
    partial = path.with_name(path.name + ".partial")
    try:
        if suffix in (".tsv", ".csv"):
            table.to_csv(partial, sep="\t" if suffix == ".tsv" else ",", index=False)
        elif suffix == ".graphml":
            nx.write_graphml(network_graph(table), partial)
        else:
            graph = network_graph(table)
            partial.write_text(json.dumps(nx.cytoscape_data(graph), indent=1))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
