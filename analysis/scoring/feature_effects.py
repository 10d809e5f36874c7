"""Statistics of feature edits (:mod:`analysis.interp.feature_intervention`'s read-outs): each edit's
behaviour read-outs against the unedited model on the same cells (paired Wilcoxon, as the head ablations), and its
causal specificity (the companion paper's test that a feature's edit moves the predictions of its own genes more than
the rest):

- ``specificity_genes``: mean prediction change of the feature's own genes (``value``) against the other genes seen
  in these cells (``baseline``), one-sided Mann-Whitney U over genes (own > rest), ``n`` own genes;
- ``specificity_positions``: mean prediction change at the positions where an edited feature fired before the edit
  (``value``) against those where none did (``baseline``); descriptive (positions of one cell are not independent).

At the model's last layer an edit changes the output only at the positions it edits (no later layer mixes positions),
so both specificity read-outs there are structural (``structural``: reported, not tested, not in the registry), as
is the behaviour read-out wherever the masked positions hold no edited feature. BH q within each read-out over the
edits given (schema ``feature_edit_results``); per-gene mean changes in schema ``feature_edit_genes``."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from .ablation import paired_row
from .registry import StatsRegistry
from .stats import benjamini_hochberg

NO_TEST = {"ci_low": np.nan, "ci_high": np.nan, "p": np.nan}


def specificity_rows(readout, own: np.ndarray) -> list[dict]:
    """The two specificity rows of one edit from its read-out (``analysis.interp.feature_intervention.FeatureReadout``:
    ``change_sum`` / ``change_count`` per gene, ``fired_*`` / ``quiet_*`` per position class); ``own``: ``[n_genes]``
    bool, the edited features' own genes."""
    seen = readout.change_count > 0
    per_gene = readout.change_sum[seen] / readout.change_count[seen]
    mine, rest = per_gene[own[seen]], per_gene[~own[seen]]
    if mine.size and rest.size and np.isfinite(per_gene).all():
        p = float(mannwhitneyu(mine, rest, alternative="greater").pvalue)
        genes = {"value": float(mine.mean()), "baseline": float(rest.mean()),
                 "delta": float(mine.mean() - rest.mean()), "ci_low": np.nan, "ci_high": np.nan, "p": p}
    else:
        genes = {"value": np.nan, "baseline": np.nan, "delta": np.nan, **NO_TEST}
    fired = readout.fired_sum / readout.fired_count if readout.fired_count else np.nan
    quiet = readout.quiet_sum / readout.quiet_count if readout.quiet_count else np.nan
    return [{"readout": "specificity_genes", **genes, "n": int(mine.size)},
            {"readout": "specificity_positions", "value": fired, "baseline": quiet, "delta": fired - quiet,
             **NO_TEST, "n": int(readout.fired_count)}]


def summarise_feature_edits(readouts: Mapping, edits: Sequence,
                            own_genes: Mapping[str, np.ndarray], symbols: np.ndarray, *, n_layers: int
                            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, genes) of ``edits`` (``analysis.interp.interventions.FeatureEdit``) of a model of ``n_layers`` from
    :func:`analysis.interp.feature_intervention.run_feature_edits`'s ``readouts``; ``own_genes``: per edit key
    ``[n_genes]`` bool; ``symbols`` ``[n_genes]``."""
    base = readouts["baseline"]
    rows, genes = [], []
    for edit in edits:
        r = readouts[edit.key]
        info = {"intervention": edit.key, "layer": edit.layer, "features": ",".join(map(str, edit.features)),
                "scale": edit.scale}
        rows.append({**info, "readout": "mlm_loss", **paired_row(r.loss, base.loss)})
        rows.append({**info, "readout": "mlm_accuracy", **paired_row(r.accuracy, base.accuracy)})
        rows.append({**info, "readout": "output_cosine_distance", **paired_row(r.output_cos, base.output_cos)})
        rows += [{**info, **row} for row in specificity_rows(r, own_genes[edit.key])]
        seen = np.flatnonzero(r.change_count > 0)
        genes.append(pd.DataFrame({"intervention": edit.key, "gene": seen, "symbol": np.asarray(symbols)[seen],
                                   "own": own_genes[edit.key][seen],
                                   "mean_change": r.change_sum[seen] / r.change_count[seen],
                                   "n": r.change_count[seen]}))
    results = pd.DataFrame(rows)
    results["structural"] = results["readout"].str.startswith("specificity") & (results["layer"] == n_layers - 1)
    results.loc[results["structural"], "p"] = np.nan
    results["q"] = np.nan
    for _, group in results.groupby("readout"):
        tested = group["p"].notna()
        if tested.any():
            results.loc[group.index[tested], "q"] = benjamini_hochberg(group.loc[tested, "p"].to_numpy())
    return results, pd.concat(genes, ignore_index=True)


def feature_edit_tests(results: pd.DataFrame) -> StatsRegistry:
    """Live feature edits in the statistics registry, exploratory: the behaviour read-out and gene-level causal
    specificity of each edit (schema ``feature_edit_results``)."""
    reg = StatsRegistry()
    rows = results[results["readout"].isin(["mlm_loss", "specificity_genes"]) & results["p"].notna()]
    for r in rows.itertuples():
        test = "Wilcoxon signed-rank (paired)" if r.readout == "mlm_loss" else "Mann-Whitney U (own > other genes)"
        reg.register("live_feature_edit", f"SAE L{r.layer} features {r.features} x{r.scale:g} changes {r.readout} "
                     f"({r.n} obs)", test, r.p, effect=r.delta, effect_name=f"delta {r.readout}", n=r.n,
                     confirmatory=False, exploratory=True)
    return reg
