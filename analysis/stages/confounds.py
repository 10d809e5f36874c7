"""The reference-side confound stage (paper sections 2.4, 4.4; Supplementary Notes 13.4, 14.2): cross-fitted
residualisation of reference-pair edge scores on expression covariates of both genes (OLS and GBDT), and the
degree-preserving null, for the read-out layer's attention and for correlation, against every reference.

Neither needs a perturbation column, so atlas data gets both. Covariates (mean, variance, detection of log1p CP10k)
and correlation come from the cells attention ran on. Correlation is scored signed (rho, the paper's) and absolute
(|rho|); the sign-matched variant needs an observed direction of change, which a reference pair does not have, so
it is not defined here (with ``perturbation.correlation_edge = sign_matched`` the signed edge is primary here)."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from ..config import PerturbationConfig
from ..io import schemas
from ..io.artifacts import RunWriter
from ..io.cells import CellData
from ..io.expression import expression_matrix
from ..io.references import ReferenceNetwork
from ..scoring import confounds
from ..scoring.edges import EdgeScores
from ..scoring.ranking import evaluable_universe
from ..scoring.registry import StatsRegistry
from .inputs import Inputs
from .timing import timed


def edge_matrices(attention: EdgeScores, corr: EdgeScores, readout: int, primary: str) -> dict[str, tuple[np.ndarray, bool]]:
    """name -> (``[G, G]`` scores, confirmatory): the read-out layer's head-mean attention, signed and absolute rho."""
    rho = corr.scores[0]
    return {"attention": (attention.scores[attention.source_index("attention_layer_mean", readout)], True),
            "correlation": (rho, primary != "absolute"),
            "correlation_absolute": (np.abs(rho), primary == "absolute")}


def run(cells: CellData, panel: pd.DataFrame, attention: EdgeScores, corr: EdgeScores,
        references: list[ReferenceNetwork], cfg: PerturbationConfig, readout: int
        ) -> tuple[dict[str, pd.DataFrame], StatsRegistry]:
    """Tables ``residualisation``, ``degree_null`` and ``degree_null_per_tf`` and their tests, over ``cells`` (the
    attention cells)."""
    reg = StatsRegistry()
    x = expression_matrix(cells, panel["gene_id"].to_numpy())
    cov = np.column_stack([x.mean(0), x.var(0), (x > 0).mean(0)])
    edges = edge_matrices(attention, corr, readout, cfg.correlation_edge)
    resid_rows, degree_rows, per_tf_rows = [], [], []
    symbols = panel["symbol"].to_numpy()
    for ref in references:
        uni = evaluable_universe(panel, ref, attention.observed)
        if uni.n_pos == 0:
            continue
        tf_idx, col_idx = np.nonzero(uni.pair_mask)
        labels = uni.labels[uni.pair_mask]
        pair_cov = np.column_stack([cov[uni.tf_rows[tf_idx]], cov[col_idx]])
        for name, (matrix, confirmatory) in edges.items():
            scores = np.nan_to_num(matrix[uni.tf_rows][uni.pair_mask])
            for model in ("ols", "gbdt"):
                res = confounds.residualise(scores, pair_cov, labels, model=model, seed=cfg.seed)
                spread = {"n_seeds": 1, "auroc_residual_sd": np.nan, "retained_sd": np.nan}
                if model in cfg.residual_seed_models and cfg.residual_seeds > 1:
                    spread = confounds.residual_stability(scores, pair_cov, labels, model=model, seeds=list(
                        range(cfg.seed, cfg.seed + cfg.residual_seeds)), known={cfg.seed: res})
                    reg.register("residualisation", f"{name} vs {ref.name}, {model}: residual AUROC across "
                                 f"{cfg.residual_seeds} cross-fitting seeds", "standard deviation (descriptive)",
                                 np.nan, effect=spread["auroc_residual_sd"], effect_name="SD of residual AUROC",
                                 n=cfg.residual_seeds, confirmatory=False)
                resid_rows.append({"reference": ref.name, "edge": name, "model": model, **res, **spread})
                reg.register("residualisation", f"{name} vs {ref.name}, {model}: share retained",
                             "cross-fitted residual AUROC", np.nan, effect=res["retained"],
                             effect_name="share of above-chance AUROC retained", n=int(labels.size),
                             confirmatory=False)
        nulls = confounds.degree_null(np.stack([m[uni.tf_rows] for m, _ in edges.values()]), uni.labels,
                                      uni.pair_mask, n_null=cfg.n_degree_null, seed=cfg.seed, per_tf=True)
        for (name, (_, confirmatory)), dn in zip(edges.items(), nulls):
            per_tf = dn.pop("per_tf")
            per_tf_rows.append(per_tf.assign(reference=ref.name, edge=name, tf=symbols[uni.tf_rows[per_tf["tf_row"]]])
                               .drop(columns="tf_row"))
            if len(per_tf):
                reg.register("degree_null_per_tf", f"{name} vs {ref.name}: mean per-TF excess over the degree null",
                             "per-TF AUROC minus its curveball mean (descriptive)", np.nan,
                             effect=float(per_tf["excess"].mean()), effect_name="mean per-TF AUROC excess",
                             n=len(per_tf), confirmatory=False)
                reg.register("degree_null_per_tf", f"{name} vs {ref.name}: within-TF precision@k over chance",
                             "precision of each TF's top-k genes, k = its targets (descriptive)", np.nan,
                             effect=float((per_tf["precision_at_k"] - per_tf["chance_precision"]).mean()),
                             effect_name="mean precision@k minus chance", n=len(per_tf), confirmatory=False)
            degree_rows.append({"reference": ref.name, "edge": name, **dn})
            reg.register("degree_null", f"{name} vs {ref.name}: excess over degree null",
                         "curveball permutation (one-sided)", dn["p_excess"], effect=dn["excess"],
                         effect_name="AUROC excess", n=int(uni.pair_mask.sum()), confirmatory=confirmatory)
    columns = list(schemas.DEGREE_NULL_PER_TF[0])
    per_tf = pd.concat(per_tf_rows, ignore_index=True)[columns] if per_tf_rows else pd.DataFrame(columns=columns)
    return {"residualisation": pd.DataFrame(resid_rows), "degree_null": pd.DataFrame(degree_rows),
            "degree_null_per_tf": per_tf}, reg


def stage(inp: Inputs, attention: EdgeScores, corr: EdgeScores, writer: RunWriter, key: str) -> StatsRegistry:
    """Run on a run's inputs and write the tables (the models' fits on one OpenMP thread: analysis.scoring.confounds)."""
    t0 = time.perf_counter()
    with timed("reference confounds"):
        tables, reg = run(inp.attention_cell_data, inp.panel, attention, corr, inp.references, inp.cfg.perturbation,
                          inp.readout_layer)
        for name, frame in tables.items():
            writer.write_table(name, frame)
    writer.mark_done("confounds", key, time.perf_counter() - t0)
    return reg
