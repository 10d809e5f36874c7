"""The paper's protocols as presets (``--protocol``): every setting the paper fixes for a context, with where it says
so, applied under the user's own settings (defaults -> protocol -> TOML -> environment -> CLI). A run records which
protocol it follows and every departure from it (:func:`deviations`): a setting the user overrode, and what the
model or data cannot match (the read-out layer is the paper's L13 only for Geneformer V2-316M; counts are capped at
what the data holds).

Values the paper's text gives: K562 primary parameterisation (SN6.2, Supplementary Table of perturbation datasets):
Welch's t-test with BH-FDR, LFC 0.5, HVG = 2,000, 2,000 control cells; lenient baseline: Mann-Whitney, LFC 0.1, HVG
= 1,000, 500 controls (``paper-k562-lenient``, registry 14's baseline rows); RPE1: perturbation genes forced into
the HVG set (3,309 genes); CRISPRa: Adamson K562, LFC 0.5; ablation on 2,000 K562 control cells with top-5/10/20/50
heads (section 2.5); read-out L13 of V2-316M, pre-specified from DLPFC data (section 2.3). The sensitivity grid's
three values per axis are not printed in the text: each axis here spans the baseline and primary values the text
does give, plus one stricter value (LFC 1.0, HVG 3,000).
"""
from __future__ import annotations

from typing import Any

PAPER_READOUT = {"Geneformer-V2-316M": 13}
PAPER_MLP_BLOCKS = {"Geneformer-V2-316M": ("13-15",)}   # SN14.4: MLP zeroing at L15 (a single layer) and L13-L15

_K562 = {
    "extraction.cells": ("control", "2.5: 2,000 K562 control cells"),
    "extraction.n_cells": (2000, "2.5, SN6.2: 2,000 control cells, one draw for attention, correlation, baselines "
                                 "and DE"),
    "perturbation.test": ("welch", "SN6.2: Welch's t-test with BH-FDR (primary)"),
    "perturbation.location_test": ("ttest", "SN16.2 registry 14, 18, 21, 23: one-sample t-test of per-perturbation "
                                            "AUROC against 0.5, t-tests over the grid, paired t-tests against "
                                            "correlation (Wilcoxon beside them)"),
    "perturbation.lfc": ("scanpy", "4.1, 4.3: Scanpy DE (its log2 fold change)"),
    "perturbation.lfc_threshold": (0.5, "SN6.2: LFC 0.5"),
    "perturbation.alpha": (0.05, "SN6.2: BH-FDR 0.05"),
    "perturbation.n_control": (2000, "SN6.2: 2,000 control cells"),
    "perturbation.universe": ("hvg", "4.3, SN14.9: top 2,000 HVGs by variance"),
    "perturbation.universe_size": (2000, "4.3: HVG = 2,000"),
    "perturbation.correlation_edge": ("signed", "SN2, SN6.2: Spearman correlation (signed, SN7)"),
    "perturbation.modality": ("crispri", "2.3: Replogle K562 CRISPRi"),
    "perturbation.grid_lfc": ((0.1, 0.5, 1.0), "SN6.3: 3 LFC thresholds (0.1 and 0.5 from SN6.5)"),
    "perturbation.grid_n_control": ((500, 1000, 2000), "SN6.3: 3 control counts (500 and 2,000 from SN6.5)"),
    "perturbation.grid_universe_size": ((1000, 2000, 3000), "SN6.3: 3 HVG counts (1,000 and 2,000 from SN6.5)"),
    "extraction.panel_size": (2500, "the panel covers the 2,000-gene universe and the perturbed genes"),
    "ablation.n_cells": (2000, "2.5: 2,000 K562 control cells"),
    "ablation.ks": ((5, 10, 20, 50), "2.5: top-5, 10, 20 and 50 heads"),
    "cssi.confirmatory_metric": ("f1", "2.2: CSSI's headline is top-k F1 against pooled (the AUROC test beside it)"),
}

PROTOCOLS: dict[str, dict[str, tuple[Any, str]]] = {
    "paper-k562": _K562,
    "paper-rpe1": {**_K562,
                   "perturbation.universe": ("hvg_plus_perturbed", "2.6, SN14.9: HVGs with perturbed genes forced in"),
                   "extraction.panel_size": (3500, "the panel covers the 3,309-gene RPE1 universe"),
                   "perturbation.modality": ("crispri", "2.6: Replogle RPE1 CRISPRi")},
    "paper-crispra": {**_K562, "perturbation.modality": ("crispra", "2.6, SN14.5: Adamson K562 CRISPRa")},
    "paper-k562-lenient": {**_K562,
                           "perturbation.test": ("mannwhitney", "SN6.5: the lenient baseline's Mann-Whitney DE"),
                           "perturbation.lfc_threshold": (0.1, "SN6.5: lenient LFC 0.1"),
                           "perturbation.universe_size": (1000, "SN6.5: lenient HVG = 1,000"),
                           "perturbation.n_control": (500, "SN6.5: lenient 500 control cells (registry 14's "
                                                           "baseline rows: 44 evaluable perturbations)")},
}


def preset(name: str) -> dict[str, Any]:
    """The dotted-key settings of protocol ``name`` (``none``, or a name ``config.check`` refuses: no settings)."""
    return {key: value for key, (value, _source) in PROTOCOLS.get(name, {}).items()}


def _get(cfg, dotted: str) -> Any:
    section, name = dotted.split(".", 1)
    return getattr(getattr(cfg, section), name)


def deviations(cfg) -> list[dict[str, Any]]:
    """Settings of ``cfg`` (a RunConfig) that differ from its protocol: one row per setting with the paper's value,
    the run's and where the paper says it."""
    if cfg.protocol == "none":
        return []
    out = []
    for key, (value, source) in PROTOCOLS[cfg.protocol].items():
        run_value = _get(cfg, key)
        normalised = tuple(run_value) if isinstance(run_value, (list, tuple)) else run_value
        if normalised != value:
            out.append({"setting": key, "paper": value, "run": run_value, "source": source})
    return out


def readout_layer_for(protocol: str, official_name: str | None) -> int | None:
    """The paper's read-out layer for an official checkpoint under ``protocol`` (None: the paper fixes none)."""
    return None if protocol == "none" else PAPER_READOUT.get(official_name or "")


def mlp_blocks_for(protocol: str, official_name: str | None) -> tuple[str, ...]:
    """The paper's MLP blocks for an official checkpoint under ``protocol`` (empty: the paper fixes none)."""
    return () if protocol == "none" else PAPER_MLP_BLOCKS.get(official_name or "", ())
