"""The untrained control arm (``precompute.py --control random-weights``): a run's verdicts and head ranking beside those
of its untrained twin, the same architecture with random weights run on the same cells and settings.

The paper has no such control. A claim that holds for the untrained twin too is a property of the architecture, the
tokenisation or the data (expression level, gene degree), not of anything the model learned; a claim that holds for
the trained model only is the one a reader may put down to learning. The twin is found among the cache's runs by its
manifest alone (:func:`untrained_twin`): the same configuration but for ``model.random_init``, and the same checkpoint
directory and data.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ..io.manifest import RunManifest

LEARNED = "learned: the untrained twin does not show it"
ARCHITECTURE = "architecture or data: the untrained twin shows it too"
UNTESTED = "not testable in the untrained twin"
SUPPORTED, NOT_SUPPORTED, NOT_TESTABLE = "supported", "not supported", "not testable"


def _config_without_weights(manifest: RunManifest) -> dict:
    cfg = manifest.config
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, random_init=False)).to_dict()


def is_untrained_twin(run: RunManifest, other: RunManifest) -> bool:
    """``other`` is ``run``'s untrained twin: random weights where ``run`` has trained ones, and otherwise the same
    configuration, checkpoint directory and data."""
    return (other.config.model.random_init and not run.config.model.random_init
            and other.model.family == run.model.family
            and other.inputs.get("model_dir") == run.inputs.get("model_dir")
            and other.inputs.get("data") == run.inputs.get("data")
            and _config_without_weights(other) == _config_without_weights(run))


def untrained_twin(run: RunManifest, manifests: list[RunManifest]) -> RunManifest | None:
    """The newest of ``manifests`` that is ``run``'s untrained twin, or None."""
    twins = [m for m in manifests if is_untrained_twin(run, m)]
    return max(twins, key=lambda m: m.finished) if twins else None


def claims_beside_control(claims: pd.DataFrame, control: pd.DataFrame) -> pd.DataFrame:
    """Claim maps (:func:`analysis.scoring.claims.claim_map`) of a run and of its untrained twin, joined on claim and
    family: ``verdict``, ``control_verdict`` and ``reading`` of a claim the run supports (:data:`ARCHITECTURE` where
    the twin supports it too, :data:`LEARNED` where the twin does not, :data:`UNTESTED` where the twin cannot test it
    or lacks the claim), empty for a claim the run does not support."""
    twin = control[["claim", "family", "verdict"]].rename(columns={"verdict": "control_verdict"})
    out = claims.merge(twin, on=["claim", "family"], how="left")
    supported = out["verdict"] == SUPPORTED
    out["reading"] = np.select([supported & (out["control_verdict"] == SUPPORTED),
                                supported & (out["control_verdict"] == NOT_SUPPORTED), supported],
                               [ARCHITECTURE, LEARNED, UNTESTED], "")
    return out


def ranking_beside_control(ranking: pd.DataFrame, control: pd.DataFrame, *, reference: str,
                           direction: str = "tf_to_target", metric: str = "auroc") -> dict:
    """Per-head ``metric`` (schema ``head_ranking``, attention heads) of a run and of its twin on one reference:
    each one's best head and value, the share of the run's heads whose value beats the twin's best head, and the
    Spearman correlation of the two models' per-head values (a high one: the ranking follows the architecture or the
    data more than the weights)."""
    def heads(frame):
        sel = frame[(frame["edge_type"] == "attention") & (frame["metric"] == metric)
                    & (frame["reference"] == reference) & (frame["direction"] == direction)]
        return sel.set_index(["layer", "head"])["value"]

    trained, untrained = heads(ranking), heads(control)
    common = trained.index.intersection(untrained.index)
    if common.empty:
        raise ValueError(f"no attention heads scored on {reference!r} ({direction}, {metric}) in both runs")
    rho = spearmanr(trained[common], untrained[common]).statistic if len(common) > 2 else np.nan
    best, best_control = trained.idxmax(), untrained.idxmax()
    return {"best_head": best, "best_value": float(trained.max()), "control_best_head": best_control,
            "control_best_value": float(untrained.max()),
            "share_above_control_best": float((trained[common] > untrained.max()).mean()),
            "spearman_heads": float(rho), "n_heads": int(len(common))}
