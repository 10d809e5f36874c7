"""The perturbation stage of precompute: DE, the on-target check, perturbation-first AUROC for every edge source, the
27-condition sensitivity grid, incremental value over gene-level features (on every observation, and on the
propensity-matched set: the paper's "exactly zero", SN14.8) and propensity matching, with every test registered in
the statistics registry (paper sections 2.3-2.4, 4.3-4.4, 4.6). Correlation enters as all three variants (signed,
absolute, sign-matched; the configured one is primary). On the embedded default two planted edge scores with known
incremental value join the confound tests (:func:`constructed_edges`). Residualisation and the degree null need no
perturbation column: :mod:`analysis.stages.confounds`."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

import time

from ..config import PerturbationConfig, RunConfig
from ..io.artifacts import RunWriter
from ..io.cells import CellData
from ..io.expression import expression_matrix
from ..io.references import ReferenceNetwork
from ..scoring import confounds, layer_selection
from ..scoring.edges import (CORRELATION_EDGE_TYPES, EdgeScores, EdgeSet, HeadEdges, combine, correlation_variants,
                             spearman_edges)
from ..scoring.panel import highly_variable
from ..scoring.perturbation import (at_threshold, differential_expression, direct_target_auroc,
                                    gene_level_scores, on_target_check, perturbation_auroc)
from ..scoring.registry import StatsRegistry
from ..scoring.stats import ttest_p, wilcoxon_p
from ..sim.simulate import constructed_edges as simulated_edges
from ..sim.simulate import make_network
from .inputs import Inputs
from .timing import timed

log = logging.getLogger("precompute")


@dataclass
class PerturbationResults:
    """The stage's tables (written as they are: every perturbation, the on-target failures marked in ``on_target``),
    its tests and parameters (``on_target_failed``: the perturbations that failed the on-target check)."""

    tables: dict[str, pd.DataFrame]
    registry: StatsRegistry
    params: dict

    def evaluable(self, name: str) -> pd.DataFrame | None:
        """Table ``name`` without the on-target failures: the one evaluable set every later test reads (the
        ablation's perturbation read-out); None when the stage made no such table."""
        table = self.tables.get(name)
        return None if table is None else table[~table["perturbation"].isin(self.params["on_target_failed"])]


LOCATION_TEST_NAMES = {"wilcoxon": "Wilcoxon signed-rank", "ttest": "t-test"}


def _location_p(test: str, diff: np.ndarray, alternative: str) -> float:
    return (ttest_p if test == "ttest" else wilcoxon_p)(diff, alternative=alternative)


def _above_chance_p(values: np.ndarray, test: str) -> float:
    """One-sided p that per-perturbation AUROCs ``values`` exceed 0.5, by ``perturbation.location_test``."""
    return _location_p(test, values - 0.5, "greater")


def register_location(reg: StatsRegistry, cfg: PerturbationConfig, analysis: str, hypothesis: str,
                      diff: np.ndarray, *, paired: bool, confirmatory: bool = True, **effect) -> None:
    """Register a location test of ``diff`` (AUROC - 0.5, one-sided; or paired differences, two-sided) by
    ``cfg.location_test``; under ``ttest`` (the paper's) the Wilcoxon signed-rank test is registered beside it as
    descriptive, its hypothesis saying so."""
    alternative, kind = ("two-sided", "paired") if paired else ("greater", "one-sided")
    tests = [cfg.location_test] + (["wilcoxon"] if cfg.location_test == "ttest" else [])
    for test in tests:
        beside = test != cfg.location_test
        reg.register(analysis, hypothesis + (" (Wilcoxon, beside the paper's t-test)" if beside else ""),
                     f"{LOCATION_TEST_NAMES[test]} ({kind})", _location_p(test, diff, alternative),
                     confirmatory=confirmatory and not beside, **effect)


def _cohens_d(values: np.ndarray, against: float | np.ndarray) -> float:
    d = values - against
    return float(d.mean() / d.std(ddof=1)) if d.size > 1 and d.std(ddof=1) > 0 else 0.0


def _pair_scores(edges: EdgeScores, source: int, de: pd.DataFrame) -> pd.DataFrame:
    index = {s: i for i, s in enumerate(edges.panel["symbol"])}
    sub = de[de["perturbation"].isin(index) & de["symbol"].isin(index)]
    rows = sub["perturbation"].map(index).to_numpy()
    cols = sub["symbol"].map(index).to_numpy()
    return pd.DataFrame({"perturbation": sub["perturbation"].to_numpy(), "symbol": sub["symbol"].to_numpy(),
                         "score": edges.scores[source][rows, cols]})


def run(cells: CellData, panel: pd.DataFrame, heads: HeadEdges | None, layer_means: EdgeScores, corr: EdgeScores,
        references: list[ReferenceNetwork], cfg: PerturbationConfig, *,
        constructed: dict[str, np.ndarray] | None = None, control_cells: np.ndarray | None = None
        ) -> PerturbationResults:
    """``heads``: every head at the source genes (None: layer means only); ``layer_means``: each layer's head mean;
    ``corr``: the Spearman edges over the cells attention ran on (:func:`analysis.scoring.edges.spearman_edges`);
    ``control_cells``: the control cells of DE and the gene-level baselines when they are the attention cells
    (:attr:`analysis.stages.inputs.Inputs.shared_controls`; None: DE draws ``n_control``, the baselines read every
    control cell)."""
    reg = StatsRegistry()
    n_layers = int(layer_means.sources["layer"].max()) + 1
    readout = cfg.resolve_readout_layer(n_layers)
    readout_idx = layer_means.source_index("attention_layer_mean", readout)
    degree = references[0].edges.groupby("tf").size().to_dict()
    baselines = gene_level_scores(cells if control_cells is None else cells.subset(control_cells), panel,
                                  reference_degree=degree)
    de = differential_expression(cells, panel[panel["in_universe"]], lfc_threshold=cfg.lfc_threshold,
                                 n_control=cfg.n_control, alpha=cfg.alpha, test=cfg.test, lfc=cfg.lfc, seed=cfg.seed,
                                 control_cells=control_cells)
    on_target = on_target_check(cells, cfg.modality, lfc=cfg.lfc)
    corr_variants = correlation_variants(corr, de.table, cfg.modality)
    corr = corr_variants.select(CORRELATION_EDGE_TYPES[cfg.correlation_edge])
    everything = combine(*([heads] if heads is not None else []), layer_means, corr_variants, baselines)
    per_pert = perturbation_auroc(everything, de)
    failed = set(on_target.loc[on_target["status"] == "failed", "perturbation"])
    tfs = frozenset(t for r in references for t in r.edges["tf"])     # TF vs non-TF splits (SN6.3, registry 26)
    log.info("perturbation-first: %d evaluable perturbations of %d (%d fail the on-target %s check and are left out "
             "of every test)", per_pert["perturbation"].nunique(), len(de.groups), len(failed), cfg.modality)
    tables = {"de_results": de.table, "de_groups": de.groups, "perturbation_auroc": per_pert, "on_target": on_target}
    confirmable = per_pert[~per_pert["perturbation"].isin(failed)]
    if confirmable.empty:
        return PerturbationResults(tables, reg, {"readout_layer": readout, "n_evaluable": 0,
                                                 "on_target_failed": sorted(failed)})

    def values(edge_type, layer=-1, head=-1):
        sel = confirmable[(confirmable["edge_type"] == edge_type) & (confirmable["layer"] == layer)
                          & (confirmable["head"] == head)]
        return sel.sort_values("perturbation")["auroc"].to_numpy()

    att, cor = values("attention_layer_mean", readout), values(CORRELATION_EDGE_TYPES[cfg.correlation_edge])
    n = att.size

    def above_chance(analysis, hypothesis, v, confirmatory=True):
        register_location(reg, cfg, analysis, hypothesis, v - 0.5, paired=False, confirmatory=confirmatory,
                          effect=float(v.mean()), effect_name="mean AUROC", n=v.size)

    def paired(analysis, hypothesis, a, b):
        register_location(reg, cfg, analysis, hypothesis, a - b, paired=True, effect=_cohens_d(a, b),
                          effect_name="Cohen's d", n=n)

    for variant, edge_type in CORRELATION_EDGE_TYPES.items():
        if variant != cfg.correlation_edge:
            above_chance("perturbation_first", f"correlation ({variant}) AUROC > 0.5", values(edge_type), False)
    above_chance("perturbation_first", f"attention L{readout} AUROC > 0.5", att)
    above_chance("perturbation_first", "correlation AUROC > 0.5", cor)
    paired("perturbation_first", f"attention L{readout} vs correlation", att, cor)
    for b in baselines.sources["edge_type"]:
        base = values(b)
        paired("trivial_baselines", f"{b} vs attention L{readout}", base, att)
        paired("trivial_baselines", f"{b} vs correlation", base, cor)
    for layer in range(n_layers):
        if layer != readout:
            above_chance("perturbation_first_layers", f"attention L{layer} AUROC > 0.5",
                         values("attention_layer_mean", layer), False)
    direct = direct_targets(combine(layer_means.take([readout_idx]), corr), de.table, references, failed, cfg, reg)
    if not direct.empty:
        tables["direct_target"] = direct
    selection = select_layers(confirmable, CORRELATION_EDGE_TYPES[cfg.correlation_edge], reg, seed=cfg.seed)
    if selection is not None:
        tables["layer_selection"] = selection
    tables["sensitivity_grid"] = sensitivity_grid(cells, panel, combine(layer_means.take([readout_idx]), baselines),
                                                  cfg, reg, exclude=failed, control_cells=control_cells,
                                                  tfs=tfs)
    check = universe_check(cells, panel, combine(layer_means, corr), de, cfg, exclude=failed)
    if not check.empty:
        tables["universe_check"] = check
        _register_universe_check(check, readout, reg)
    features = pd.DataFrame({"symbol": panel["symbol"],
                             **{k: baselines.scores[i, 0] for i, k in enumerate(("mean", "variance", "detection"))}}
                            ).set_index("symbol")
    evaluable_de = de.table[~de.table["perturbation"].isin(failed)]   # incremental value: the same evaluable set
    edge_cols = {"attention": _pair_scores(layer_means, readout_idx, evaluable_de),
                 "correlation": _pair_scores(corr, 0, evaluable_de)}
    for variant, edge_type in CORRELATION_EDGE_TYPES.items():
        if variant != cfg.correlation_edge:
            edge_cols[f"correlation_{variant}"] = _pair_scores(corr_variants.select(edge_type), 0, evaluable_de)
    if constructed:
        for name, matrix in constructed.items():
            fake = EdgeScores(matrix[None], pd.DataFrame({"edge_type": [name], "layer": [-1], "head": [-1]}),
                              layer_means.observed, panel, {})
            edge_cols[f"sim_{name}"] = _pair_scores(fake, 0, evaluable_de)
    obs = confounds.observation_table(evaluable_de, features, edge_cols)
    tables["incremental_value"] = incremental(obs, edge_cols, cfg, reg, sample="all observations", tfs=tfs)
    match = confounds.propensity_match(obs, seed=cfg.seed)
    tables["propensity_balance"] = match.balance
    tables["incremental_value_matched"] = incremental(match.matched, edge_cols, cfg, reg,
                                                      sample="the propensity-matched set", splits=("perturbation",))
    prop_rows = []
    for name in edge_cols:
        m = match.matched
        auc = roc_auc_score(m["label"], m[name]) if m["label"].nunique() == 2 else np.nan
        prop_rows.append({"edge": name, "auroc_matched": auc, "auroc_unmatched": roc_auc_score(obs["label"], obs[name]),
                          **match.params})
    tables["propensity"] = pd.DataFrame(prop_rows)
    return PerturbationResults(tables, reg, {"readout_layer": readout, "n_evaluable": int(n),
                                             "n_on_target_failed": len(failed), "on_target_failed": sorted(failed),
                                             "de": de.params})


def select_layers(per_pert: pd.DataFrame, correlation_edge: str, reg: StatsRegistry, *, seed: int
                  ) -> pd.DataFrame | None:
    """Every layer vs correlation (paired, descriptive) and nested 5-fold layer selection over perturbations
    (SN14.1; :mod:`analysis.scoring.layer_selection`), registered under ``layer_selection``; returns the held-out
    table (None with fewer than two perturbations)."""
    att, corr = layer_selection.layer_matrix(per_pert, correlation_edge)
    for r in layer_selection.layer_vs_correlation(att, corr).itertuples():
        reg.register("layer_selection", f"attention L{r.layer} vs correlation", "Wilcoxon signed-rank (paired)",
                     r.p, effect=r.advantage, effect_name="mean AUROC advantage", n=r.n, confirmatory=False)
    if len(att) < 2:
        return None
    table, s = layer_selection.nested_selection(att, corr, seed=seed)
    reg.register("layer_selection", f"nested CV: layer chosen on training folds vs correlation on held-out "
                 f"perturbations ({s['n_folds']} folds, L{s['modal_layer']} in {s['stability']:.0%})",
                 "Wilcoxon signed-rank (paired, pooled held-out)", s["p_pooled"], effect=s["advantage"],
                 effect_name="mean held-out AUROC advantage", n=s["n"], confirmatory=False)
    reg.register("layer_selection", "nested CV: any fold's held-out advantage (Bonferroni over folds)",
                 "Wilcoxon signed-rank per fold, Bonferroni", s["p_bonferroni"], effect=s["advantage"],
                 effect_name="mean held-out AUROC advantage", n=s["n"], confirmatory=False)
    low, high = layer_selection.held_out_ci(table, seed=seed)
    reg.register("layer_selection", f"nested CV: held-out advantage, 95% bootstrap CI [{low:.4f}, {high:.4f}]",
                 "perturbation bootstrap, 1,000 draws (descriptive)", np.nan, effect=s["advantage"],
                 effect_name="mean held-out AUROC advantage", n=s["n"], confirmatory=False)
    search = layer_selection.bonferroni_layer_search(att, corr)
    reg.register("layer_selection", f"layer search: best of {search['n_layers']} layers (L{search['layer']}) vs "
                 f"correlation, Bonferroni over the layers", "Wilcoxon signed-rank (paired), x layers searched",
                 search["p_bonferroni"], effect=search["advantage"], effect_name="mean AUROC advantage",
                 n=search["n"], confirmatory=False)
    return table


def direct_targets(edges: EdgeSet, de_table: pd.DataFrame, references: list[ReferenceNetwork], failed: set[str],
                   cfg: PerturbationConfig, reg: StatsRegistry) -> pd.DataFrame:
    """The direct-target check (:func:`analysis.scoring.perturbation.direct_target_auroc`) of the read-out layer's
    attention and the primary correlation edge against every reference, on the perturbations that passed the
    on-target check; each source's AUROCs against 0.5 registered, descriptive (the paper reports the means, SN16.2
    registry 35). Columns: reference and :func:`perturbation_auroc`'s."""
    frames = []
    for ref in references:
        table = direct_target_auroc(edges, de_table[~de_table["perturbation"].isin(failed)], ref.pairs())
        frames.append(table.assign(reference=ref.name))
        for (etype, layer), grp in table.groupby(["edge_type", "layer"]):
            if len(grp) >= 2:
                label = f"attention L{layer}" if etype == "attention_layer_mean" else "correlation"
                register_location(reg, cfg, "direct_target", f"{ref.name} targets of perturbed TFs: {label} AUROC > "
                                  "0.5", grp["auroc"].to_numpy() - 0.5, paired=False, confirmatory=False,
                                  effect=float(grp["auroc"].mean()), effect_name="mean AUROC", n=len(grp))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def incremental(obs: pd.DataFrame, edge_cols: dict, cfg: PerturbationConfig, reg: StatsRegistry, *, sample: str,
                splits=confounds.SPLITS, tfs: frozenset[str] = frozenset()) -> pd.DataFrame:
    """:func:`analysis.scoring.confounds.incremental_value` of every edge on ``obs``, with its tests registered:
    confirmatory for attention and the primary correlation edge under the paper's design (GroupKFold by
    perturbation, logistic regression), descriptive otherwise; beside each primary test, descriptive, the smallest
    gain it could detect (80% power) and, with ``tfs``, gene-only AUROC on TF minus non-TF perturbations (registry
    26). A split that cannot be made (one perturbation, or one gene) is logged and left out."""
    inc = confounds.incremental_value(obs, list(edge_cols), splits=splits, n_boot=cfg.n_boot, seed=cfg.seed,
                                      tf_perturbations=tfs)
    missing = [s for s in splits if inc.empty or s not in set(inc["split"])]
    if missing:
        log.warning("incremental value on %s: split(s) %s skipped (a split needs two or more groups to hold out: "
                    "perturbations for 'perturbation', target genes for 'gene', both for 'joint')", sample,
                    ", ".join(missing))
    if inc.empty:
        return inc
    suffix = "" if sample == "all observations" else f" on {sample}"
    for r in inc[(inc["feature_set"].str.startswith("gene+")) & (inc["metric"] == "auroc")].itertuples():
        primary = (r.split == "perturbation" and r.model == "logistic"
                   and r.feature_set in ("gene+attention", "gene+correlation"))
        reg.register("incremental_value", f"{r.feature_set} > gene ({r.split} split, {r.model}){suffix}",
                     "perturbation bootstrap (one-sided)", r.p_delta, effect=r.delta, effect_name="delta AUROC",
                     n=r.n_obs, confirmatory=primary)
        if primary:
            reg.register("incremental_value", f"power: smallest {r.feature_set} gain detectable ({r.split} split, "
                         f"{r.model}){suffix}", "bootstrap SE x 2.49 (80% power, one-sided alpha 0.05)", np.nan,
                         effect=r.min_detectable_delta, effect_name="minimum detectable delta AUROC", n=r.n_obs,
                         confirmatory=False)
    gene = inc[(inc["feature_set"] == "gene") & (inc["split"] == "perturbation") & (inc["model"] == "logistic")
               ].set_index("metric")
    if {"auroc_tf", "auroc_non_tf"} <= set(gene.index):
        reg.register("incremental_value", f"gene-only AUROC on TF vs non-TF perturbations (perturbation split, "
                     f"logistic){suffix}", "subgroup (descriptive)", np.nan,
                     effect=float(gene.loc["auroc_tf", "value"] - gene.loc["auroc_non_tf", "value"]),
                     effect_name="TF minus non-TF AUROC", n=int(gene.loc["auroc", "n_obs"]), confirmatory=False)
    return inc


def grid_controls(cells: CellData, n_controls: list[int], control_cells: np.ndarray | None, seed: int
                  ) -> dict[int, np.ndarray]:
    """Control cells of each control-count level: the run's own draw (``control_cells``) at its size, else a seeded
    draw of that many (every control cell at the top); DE and the level's correlation edges read the same cells."""
    labels = cells.obs[cells.perturbation_col].astype(str).to_numpy()
    every = np.nonzero(labels == cells.control_label)[0]
    out = {}
    for n in n_controls:
        if control_cells is not None and len(control_cells) == n:
            out[n] = np.sort(np.asarray(control_cells))
        else:
            out[n] = every if n >= every.size else np.sort(np.random.default_rng(seed).choice(every, n, replace=False))
    return out


def grid_universes(cells: CellData, panel: pd.DataFrame, cfg: PerturbationConfig) -> dict[int, pd.DataFrame]:
    """Genes (``gene_id``, ``symbol``) of each universe-size level: the most variable of every gene the data measures
    (the paper's HVG universe, SN6.3: a 3,000-gene level is 3,000 genes whatever the run's own universe), perturbed
    genes added under ``hvg_plus_perturbed``; under ``universe = panel`` the run's universe genes by variance. Sizes
    are ``grid_universe_size`` or fractions of the run's universe; levels whose gene sets coincide are one."""
    base = panel[panel["in_universe"]]
    pool = (base[["gene_id", "symbol"]] if cfg.universe == "panel" else
            pd.DataFrame({"gene_id": cells.gene_ids, "symbol": cells.symbols}).drop_duplicates("symbol"))
    expressed = cells.moments.pooled().columns(pool["gene_id"].to_numpy()).var(ddof=0)[0] > 0
    pool = pool[expressed].reset_index(drop=True)
    order = highly_variable(cells, pool["gene_id"].to_numpy(), len(pool))
    sizes = sorted({min(n, len(order)) for n in cfg.grid_universe_size}) or \
        [max(2, int(round(f * len(base)))) for f in cfg.grid_universe_fraction]
    forced = (pool["symbol"].isin(cells.perturbed_genes()).to_numpy() if cfg.universe == "hvg_plus_perturbed"
              else np.zeros(len(pool), dtype=bool))
    out, seen = {}, set()
    for size in sizes:
        take = np.zeros(len(pool), dtype=bool)
        take[order[:size]] = True
        genes = pool[take | forced]
        if frozenset(genes["symbol"]) not in seen:
            seen.add(frozenset(genes["symbol"]))
            out[size] = genes.reset_index(drop=True)
    return out


def sensitivity_grid(cells: CellData, panel: pd.DataFrame, panel_edges: EdgeSet, cfg: PerturbationConfig,
                     reg: StatsRegistry, *, exclude: set[str] = frozenset(), control_cells: np.ndarray | None = None,
                     tfs: frozenset[str] = frozenset()) -> pd.DataFrame:
    """Mean per-perturbation AUROC over LFC threshold x control-cell count x universe size (3 x 3 x 3 = 27 conditions;
    Supplementary Note 6.3), each condition built as the paper builds it: its own universe of the most variable
    genes (:func:`grid_universes`), its own control cells (:func:`grid_controls`), DE of every perturbation against
    those controls over that universe, and Spearman edges recomputed on those controls over that universe (all three
    variants; the primary one's test registered). ``panel_edges`` (the read-out layer's attention and the gene-level
    baselines) exist on the panel only and are scored on the universe genes the panel holds (``n_genes`` says how
    many). Each condition is reported over all evaluable perturbations and split into TF and non-TF perturbations
    (the perturbed gene in ``tfs``, SN6.3); a condition where no perturbation is evaluable (no perturbed gene among
    its genes, or no DE target) is one row of the primary edge with ``n_evaluable`` 0. ``exclude``: perturbations left
    out (failed on-target check)."""
    n_ctrl = int((cells.obs[cells.perturbation_col].astype(str) == cells.control_label).sum())
    n_controls = sorted({min(n, n_ctrl) for n in cfg.grid_n_control}) or \
        [max(3, int(round(f * n_ctrl))) for f in cfg.grid_control_fraction]
    controls = grid_controls(cells, n_controls, control_cells, cfg.seed)
    universes = grid_universes(cells, panel, cfg)
    primary = CORRELATION_EDGE_TYPES[cfg.correlation_edge]
    panel_symbols = set(panel["symbol"])
    rows = []
    for n_control, ctrl in controls.items():
        control_data = cells.subset(ctrl)
        for size, genes in universes.items():
            corr = spearman_edges(control_data, genes)
            universe = set(genes["symbol"])
            tested = differential_expression(cells, genes, lfc_threshold=cfg.grid_lfc[0], alpha=cfg.alpha,
                                             test=cfg.test, lfc=cfg.lfc, seed=cfg.seed, control_cells=ctrl)
            for lfc in cfg.grid_lfc:                      # one DE per controls and universe; thresholds re-call it
                de = at_threshold(tested, lfc)
                scored = pd.concat([perturbation_auroc(correlation_variants(corr, de.table, cfg.modality), de
                                                       ).assign(n_genes=len(universe)),
                                    perturbation_auroc(panel_edges, de, universe=universe
                                                       ).assign(n_genes=len(universe & panel_symbols))])
                scored = scored[~scored["perturbation"].isin(exclude)]
                scored["group"] = np.where(scored["perturbation"].isin(tfs), "TF", "non-TF")
                if not (scored["edge_type"] == primary).any():            # the condition stays in the table
                    rows.append({"lfc_threshold": lfc, "n_control": n_control, "universe_size": size,
                                 "n_genes": len(universe), "perturbations": "all", "edge_type": primary, "layer": -1,
                                 "mean_auroc": np.nan, "n_evaluable": 0, "p": np.nan})
                for (etype, layer), grp in scored.groupby(["edge_type", "layer"]):
                    for subset, part in (("all", grp), *grp.groupby("group")):
                        v = part["auroc"].to_numpy()
                        rows.append({"lfc_threshold": lfc, "n_control": n_control, "universe_size": size,
                                     "n_genes": int(part["n_genes"].iloc[0]), "perturbations": subset,
                                     "edge_type": etype, "layer": layer, "mean_auroc": float(v.mean()),
                                     "n_evaluable": int(v.size),
                                     "p": _above_chance_p(v, cfg.location_test) if v.size > 1 else np.nan})
                    if etype == primary:
                        v = grp["auroc"].to_numpy()
                        register_location(reg, cfg, "sensitivity_grid", f"correlation AUROC > 0.5 (lfc {lfc}, "
                                          f"{n_control} controls, {len(universe)} genes)", v - 0.5, paired=False,
                                          confirmatory=False, effect=float(v.mean()), effect_name="mean AUROC",
                                          n=int(v.size))
    grid = pd.DataFrame(rows)
    _register_tf_split(grid, primary, reg)
    return grid


def _register_tf_split(grid: pd.DataFrame, primary: str, reg: StatsRegistry) -> None:
    """Descriptive: the primary correlation edge's mean AUROC on TF perturbations minus non-TF ones, median over the
    conditions where both groups are evaluable (SN6.3's TF vs non-TF comparison)."""
    split = grid[(grid["edge_type"] == primary) & (grid["perturbations"] != "all")].pivot_table(
        index=["lfc_threshold", "n_control", "universe_size"], columns="perturbations", values="mean_auroc")
    both = split.dropna() if {"TF", "non-TF"} <= set(split.columns) else split.iloc[:0]
    if both.empty:
        return
    reg.register("sensitivity_grid", "TF vs non-TF perturbations: correlation mean AUROC difference (median over "
                 f"{len(both)} conditions)", "descriptive", np.nan, effect=float((both["TF"] - both["non-TF"]).median()),
                 effect_name="TF minus non-TF mean AUROC", n=len(both), confirmatory=False)


def universe_check(cells: CellData, panel: pd.DataFrame, edges: EdgeSet, de, cfg: PerturbationConfig, *,
                   exclude: set[str] = frozenset()) -> pd.DataFrame:
    """The HVG-protocol confound check (Supplementary Note 14.9): per-perturbation AUROC of every layer's head mean
    and of the primary correlation edge (``edges``, in that order) under the run's universe (``run``) and under the
    universe's top genes by variance with no perturbed gene forced in (``hvg_only``): as many as
    ``perturbation.universe_size`` for an ``hvg_plus_perturbed`` run (the HVG list it started from), else the universe
    minus as many genes as it holds perturbed genes. Rows: protocol, perturbation, layer, attention_auroc,
    correlation_auroc, n_genes. Empty for an ``hvg`` run (no gene was forced in; DE covers the universe only)."""
    if cfg.universe == "hvg":
        return pd.DataFrame()
    scored = panel[panel["in_universe"]]
    order = scored["symbol"].to_numpy()[highly_variable(cells, scored["gene_id"].to_numpy(), len(scored))]
    forced = set(cells.perturbed_genes()) & set(order)
    size = cfg.universe_size if cfg.universe == "hvg_plus_perturbed" else len(order) - len(forced)
    rows = []
    for protocol, universe in (("run", set(order)), ("hvg_only", set(order[:max(size, 2)]))):
        res = perturbation_auroc(edges, de, universe=universe)
        res = res[~res["perturbation"].isin(exclude)]
        att = res[res["edge_type"] == "attention_layer_mean"]
        corr = res[res["edge_type"] != "attention_layer_mean"].set_index("perturbation")["auroc"]
        rows.append(pd.DataFrame({"protocol": protocol, "perturbation": att["perturbation"].to_numpy(),
                                  "layer": att["layer"].to_numpy(), "attention_auroc": att["auroc"].to_numpy(),
                                  "correlation_auroc": corr.loc[att["perturbation"]].to_numpy(),
                                  "n_genes": len(universe)}))
    return pd.concat(rows, ignore_index=True)


def _register_universe_check(check: pd.DataFrame, readout: int, reg: StatsRegistry) -> None:
    """Registry: does the read-out layer's advantage over correlation move when the forced genes leave (paired)."""
    sel = check[check["layer"] == readout].assign(adv=lambda f: f["attention_auroc"] - f["correlation_auroc"])
    wide = sel.pivot_table(index="perturbation", columns="protocol", values="adv").dropna()
    if wide.shape[1] == 2 and len(wide) >= 2:
        diff = (wide["hvg_only"] - wide["run"]).to_numpy()
        reg.register("universe_check", f"attention L{readout} advantage over correlation changes without forced "
                     "perturbed genes", "Wilcoxon signed-rank (paired)", wilcoxon_p(diff), effect=float(diff.mean()),
                     effect_name="change of mean advantage", n=int(diff.size), confirmatory=False)


def constructed_edges(cfg: RunConfig, cells: CellData, panel: pd.DataFrame) -> dict[str, np.ndarray]:
    """The simulation's planted edge scores (oracle pairwise signal, and gene-level-only) over the panel."""
    # control cells only, like the gene-level features: variance over perturbed cells would leak DE status
    variance = expression_matrix(cells.controls(), panel["gene_id"].to_numpy()).var(0)
    return simulated_edges(make_network(cfg.simulation), list(panel["symbol"]), variance, seed=cfg.simulation.seed)


def stage(inp: Inputs, heads: HeadEdges, layer_means: EdgeScores, corr: EdgeScores, writer: RunWriter, key: str
          ) -> PerturbationResults:
    """Run the stage on a run's inputs and write its tables (the confound models' fits run on one OpenMP thread:
    see analysis.scoring.confounds)."""
    t0 = time.perf_counter()
    with timed("perturbation"):
        embedded = inp.provenance.get("data") == "embedded simulation"
        planted = constructed_edges(inp.cfg, inp.cells, inp.panel) if embedded else None
        result = run(inp.cells, inp.panel, heads, layer_means, corr, inp.references, inp.cfg.perturbation,
                     constructed=planted, control_cells=inp.shared_controls)
        for name, frame in {**result.tables, "perturbations_left_out": inp.left_out}.items():
            writer.write_table(name, frame)
    writer.mark_done("perturbation", key, time.perf_counter() - t0)
    return result
