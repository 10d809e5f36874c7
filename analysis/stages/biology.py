"""The layer-biology stage (paper Supplementary Note 17; registry section 17): every layer's head-mean attention
against undirected pair references (STRING; the embedded default's co-regulation pairs) and the regulatory
references read as pairs, over all universe gene pairs, with depth trends, profile correlations, the
expression-controlled partial correlation and attention-expression agreement (:mod:`analysis.scoring.biology`).
Cheap (no forward pass): recomputed on every precompute."""
from __future__ import annotations

import time

from ..io.artifacts import RunWriter
from ..scoring import biology
from ..scoring.edges import EdgeScores
from ..scoring.registry import StatsRegistry
from .inputs import Inputs
from .timing import timed


def stage(inp: Inputs, layer_means: EdgeScores, corr_edges: EdgeScores, writer: RunWriter, key: str) -> StatsRegistry:
    """Write ``layer_biology``, ``layer_biology_control`` and ``attention_expression``; return their tests."""
    t0 = time.perf_counter()
    with timed("layer biology"):
        references = inp.pair_references + inp.references
        profiles = biology.layer_profiles(layer_means, corr_edges, references)
        control = biology.expression_control(layer_means, corr_edges, references,
                                             n_negatives=inp.cfg.biology.n_negatives, seed=inp.cfg.biology.seed)
        agreement = biology.attention_expression_agreement(layer_means, corr_edges)
        writer.write_table("layer_biology", profiles)
        writer.write_table("layer_biology_control", control)
        writer.write_table("attention_expression", agreement)
    writer.mark_done("biology", key, time.perf_counter() - t0)
    return biology.biology_tests(profiles, control, agreement)
