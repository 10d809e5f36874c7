"""Column declarations and validators for every tidy result table (one place, checked on write and before drawing)."""
from __future__ import annotations

import pandas as pd


class SchemaError(ValueError):
    """A result table is missing a declared column or has NaN where none is allowed."""


# name -> (required columns, columns allowed to hold NaN)
HEAD_RANKING = (
    ("reference", "direction", "edge_type", "layer", "head", "metric", "value",
     "ci_low", "ci_high", "p", "q", "n_pos", "n_neg", "rank"),
    ("ci_low", "ci_high", "p", "q"),
)
PER_TF = (("reference", "direction", "edge_type", "layer", "head", "tf", "auroc", "n_pos", "n_neg"), ())
PANEL = (("gene_index", "gene_id", "symbol", "is_hvg", "is_tf", "is_perturbed", "n_cells", "in_universe"), ())
REFERENCE_EDGES = (("reference", "tf", "target", "mode", "confidence"), ())
GENE_SET_MEMBERS = (("collection", "gene_set", "gene"), ())
STAGE_TIMINGS = (("stage", "seconds", "skipped", "peak_rss_gib"), ("peak_rss_gib",))

PERTURBATION_AUROC = (("perturbation", "edge_type", "layer", "head", "auroc", "n_pos", "n_neg"), ())
DE_RESULTS = (("perturbation", "gene_id", "symbol", "lfc", "p", "q", "is_de", "is_self"), ())
LAYER_SELECTION = (("fold", "perturbation", "selected_layer", "attention_auroc", "correlation_auroc"), ())
DE_GROUPS = (("perturbation", "n_cells", "n_de"), ())
ON_TARGET = (("perturbation", "n_cells", "on_target_lfc", "expected", "status"), ("on_target_lfc",))
SENSITIVITY_GRID = (("lfc_threshold", "n_control", "universe_size", "n_genes", "perturbations", "edge_type", "layer",
                     "mean_auroc", "n_evaluable", "p"), ("p", "mean_auroc"))
INCREMENTAL_VALUE = (("split", "model", "feature_set", "metric", "value", "delta", "delta_ci_low", "delta_ci_high",
                      "p_delta", "delta_se", "min_detectable_delta", "n_obs"),
                     ("delta", "delta_ci_low", "delta_ci_high", "p_delta", "value", "delta_se",
                      "min_detectable_delta"))
RESIDUALISATION = (("reference", "edge", "model", "auroc", "auroc_residual", "retained", "r2_covariates", "n_seeds",
                    "auroc_residual_sd", "retained_sd"), ("retained", "auroc_residual_sd", "retained_sd"))
PROPENSITY = (("edge", "auroc_matched", "auroc_unmatched", "n_pairs"), ("auroc_matched",))
PROPENSITY_BALANCE = (("covariate", "smd_before", "smd_after"), ("smd_after",))
DEGREE_NULL = (("reference", "edge", "auroc", "degree_null_mean", "shuffle_null_mean", "chance", "degree",
                "excess", "p_excess"), ())
DIRECT_TARGET = (("perturbation", "reference", "edge_type", "layer", "head", "auroc", "n_pos", "n_neg"), ())
RANK_REVERSAL = (("reference", "direction", "ordering", "first", "second", "first_value", "second_value", "p_flip",
                  "n_boot", "unit", "n", "stable"), ("p_flip",))
STATISTICS_REGISTRY = (("test_id", "analysis", "hypothesis", "test", "p", "effect", "effect_name", "n",
                        "confirmatory", "exploratory", "paper_entry", "paper_tier", "q", "q_all",
                        "q_primary_per_analysis", "q_paper", "significant"),
                       ("p", "q", "q_all", "q_primary_per_analysis", "q_confirmatory", "q_paper"))

ABLATION_RESULTS = (("intervention", "family", "k", "draw", "readout", "value", "baseline", "delta", "ci_low",
                     "ci_high", "p", "q", "n", "structural"), ("ci_low", "ci_high", "p", "q"))
ABLATION_FIDELITY = (("intervention", "family", "k", "draw", "layer", "hidden_cos_mean", "hidden_cos_max"), ())

CSSI_CURVE = (("reference", "direction", "n_strata", "n_found", "resolution", "site", "edge_type", "layer", "head",
               "label", "aggregation", "metric", "value", "pooled", "delta", "null_mean", "null_low", "null_high",
               "p_random_strata", "p_label_shuffle", "gene_permuted_mean", "p_gene_permuted",
               "p_gene_permuted_delta", "n_null"),
              ("p_label_shuffle", "gene_permuted_mean", "p_gene_permuted", "p_gene_permuted_delta"))
CSSI_NULL = (("reference", "direction", "n_strata", "site", "aggregation", "metric", "draw", "value"), ())
CSSI_SYNTHETIC = (("config", "n_cells", "n_states", "seed", "strata", "pooled_f1", "cssi_f1", "pooled_auroc",
                   "cssi_auroc", "paper_ratio"), ())
CSSI_CELLS = (("cell", "obs_name", "fine_cluster", "random_group", "x", "y", "cell_state"), ())
CSSI_STRATA = (("n_strata", "n_found", "fine_cluster", "stratum", "resolution"), ())

SCALING_CURVE = (("reference", "seed", "n_units", "n_cells", "edge_type", "layer", "head", "label", "metric", "value"),
                 ())
SCALING_AGREEMENT = (("reference", "n_units", "n_cells", "edge_type", "layer", "head", "label", "jaccard_mean",
                      "jaccard_min", "n_pairs"), ())
SCALING_BOOTSTRAP = (("reference", "n_units", "n_cells", "edge_type", "layer", "head", "label", "auroc_mean",
                      "ci_low", "ci_high", "n_boot"), ())
COMPOSITION_CURVE = (("reference", "condition", "seed", "n_cells", "n_states", "auroc", "f1", "states_from"), ())
TF_BOOTSTRAP = (("reference", "edge_type", "layer", "label", "tf", "auroc", "ci_low", "ci_high", "n_pos", "n_neg",
                 "ci_side", "n_boot"), ("ci_low", "ci_high"))
LAYER_BIOLOGY = (("reference", "kind", "edge_type", "layer", "auroc", "n_pos", "n_neg"), ())
LAYER_BIOLOGY_CONTROL = (("reference", "layer", "r_raw", "r_partial", "p_partial", "retained", "n"),
                         ("r_partial", "p_partial", "retained"))
ATTENTION_EXPRESSION = (("layer", "correlation", "rho", "p", "n"), ("rho", "p"))
UNIVERSE_CHECK = (("protocol", "perturbation", "layer", "attention_auroc", "correlation_auroc", "n_genes"), ())
PERTURBATIONS_LEFT_OUT = (("perturbation", "reason"), ())
DEGREE_NULL_PER_TF = (("reference", "edge", "tf", "auroc", "degree_null_mean", "excess", "precision_at_k",
                       "chance_precision", "k"), ("degree_null_mean", "excess"))
SAE_LAYERS = (("layer", "d_model", "n_features", "k", "n_rows", "n_cells", "epochs", "final_loss",
               "fraction_variance_explained", "n_dead", "n_dense", "svd_directions", "n_svd_visible",
               "behaviour_loss", "behaviour_loss_spliced", "behaviour_delta", "train_seconds", "n_modules",
               "causal_specificity", "specificity_features"), ("causal_specificity",))
SAE_FEATURES = (("layer", "feature", "firing_rate", "mean_activation", "max_svd_cos", "svd_visible", "dead", "dense",
                 "top_genes", "module", "module_x", "module_y"), ("mean_activation", "module_x", "module_y"))
SAE_COACTIVATION = (("layer", "a", "b", "r"), ())
SAE_PROGRAMMES = (("layer", "programme", "kind", "best_feature", "r", "null_r", "n_cells"), ("r", "null_r"))
SAE_REGULATORY = (("layer", "tf", "n_perturbed", "n_control", "n_responding", "responding", "preference",
                   "null_preference", "p", "q", "passes", "overlap", "feature_genes", "n_targets", "expected",
                   "p_hypergeom", "rotated_tf", "rotated_p", "rotated_q", "rotated_passes"),
                  ("preference", "expected", "rotated_p", "rotated_q"))
FEATURE_EDIT_RESULTS = (("intervention", "layer", "features", "scale", "readout", "value", "baseline", "delta",
                         "ci_low", "ci_high", "p", "q", "n", "structural"),
                        ("value", "baseline", "delta", "ci_low", "ci_high", "p", "q"))
FEATURE_EDIT_GENES = (("intervention", "gene", "symbol", "own", "mean_change", "n"), ("mean_change",))

TABLES = {
    "head_ranking": HEAD_RANKING,
    "per_tf": PER_TF,
    "panel": PANEL,
    "reference_edges": REFERENCE_EDGES,
    "pair_reference_edges": REFERENCE_EDGES,      # undirected pair references (STRING), among the SAE's genes
    "gene_set_members": GENE_SET_MEMBERS,         # GMT gene sets (--gene-sets) among the SAE's genes
    "stage_timings": STAGE_TIMINGS,
    "perturbation_auroc": PERTURBATION_AUROC,
    "de_results": DE_RESULTS,
    "de_groups": DE_GROUPS,
    "sensitivity_grid": SENSITIVITY_GRID,
    "on_target": ON_TARGET,
    "layer_selection": LAYER_SELECTION,
    "incremental_value": INCREMENTAL_VALUE,
    "incremental_value_matched": INCREMENTAL_VALUE,
    "residualisation": RESIDUALISATION,
    "propensity": PROPENSITY,
    "propensity_balance": PROPENSITY_BALANCE,
    "degree_null": DEGREE_NULL,
    "statistics_registry": STATISTICS_REGISTRY,
    "rank_reversal": RANK_REVERSAL,
    "direct_target": DIRECT_TARGET,
    "ablation_results": ABLATION_RESULTS,
    "ablation_fidelity": ABLATION_FIDELITY,
    "cssi_curve": CSSI_CURVE,
    "cssi_null": CSSI_NULL,
    "cssi_synthetic": CSSI_SYNTHETIC,
    "cssi_cells": CSSI_CELLS,
    "cssi_strata": CSSI_STRATA,
    "scaling_curve": SCALING_CURVE,
    "scaling_agreement": SCALING_AGREEMENT,
    "scaling_bootstrap": SCALING_BOOTSTRAP,
    "composition_curve": COMPOSITION_CURVE,
    "tf_bootstrap": TF_BOOTSTRAP,
    "layer_biology": LAYER_BIOLOGY,
    "layer_biology_control": LAYER_BIOLOGY_CONTROL,
    "attention_expression": ATTENTION_EXPRESSION,
    "universe_check": UNIVERSE_CHECK,
    "perturbations_left_out": PERTURBATIONS_LEFT_OUT,
    "degree_null_per_tf": DEGREE_NULL_PER_TF,
    "sae_layers": SAE_LAYERS,
    "sae_features": SAE_FEATURES,
    "sae_programmes": SAE_PROGRAMMES,
    "sae_regulatory": SAE_REGULATORY,
    "sae_coactivation": SAE_COACTIVATION,
    "feature_edit_results": FEATURE_EDIT_RESULTS,
    "feature_edit_genes": FEATURE_EDIT_GENES,
}


def validate(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Raise :class:`SchemaError` naming the first missing column or NaN-holding column of table ``name``."""
    required, nullable = TABLES[name]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise SchemaError(f"table {name!r} is missing column(s) {missing}; has {list(frame.columns)}")
    for col in required:
        if col not in nullable and frame[col].isna().any():
            raise SchemaError(f"table {name!r} column {col!r} has {int(frame[col].isna().sum())} NaN value(s)")
    return frame
