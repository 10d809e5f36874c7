"""Science library of the single-cell foundation-model interpretability explorer (importable without Dash).

The public API, scanpy-style, resolved lazily so that importing a torch-free layer (``analysis.io``,
``analysis.scoring``, as the app does) never loads torch::

    import analysis
    adapter = analysis.load_adapter("/path/to/scGPT_human")          # family detected from the directory
    cells = analysis.load_cells("cells.h5ad", symbol_to_id=None, require_ensembl=False)
    store = analysis.extract_attention(adapter, tokens, panel)
    run = analysis.open_run("cache")                                 # a finished run: tables, verdicts, networks
    edges = analysis.run_network("cache/artifacts/<run>", "L3 mean")   # source, target, weight for decoupler
    analysis.write_network(edges, "L3_mean.graphml")                   # or .tsv, .csv, .cyjs (Cytoscape)

Layers (DESIGN.md section 2; each imports only those listed for it): ``io`` -> ``models`` -> ``interp``;
``scoring`` (torch-free, on ``io``); ``results`` (a finished run for notebooks, on ``io`` and ``scoring``); ``stages``
(precompute only); ``rerun``; ``sim``.
"""
from __future__ import annotations

import importlib

_API = {
    "load_adapter": "analysis.models.base", "detect_family": "analysis.models.base",
    "load_cells": "analysis.io.cells", "load_reference": "analysis.io.references",
    "read_manifest": "analysis.io.artifacts", "extract_attention": "analysis.interp.attention",
    "hooked": "analysis.interp.hooks", "InterventionSpec": "analysis.interp.interventions",
    "attention_edges": "analysis.scoring.edges", "rank_heads": "analysis.scoring.ranking",
    "RunContext": "analysis.rerun", "load_config": "analysis.config",
    "run_network": "analysis.scoring.networks", "write_network": "analysis.io.network_files",
    "open_run": "analysis.results",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
