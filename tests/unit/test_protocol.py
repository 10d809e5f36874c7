"""The paper's protocol: presets against a table written from the paper, deviations, the evaluation universe against
hand-built gene sets, Scanpy's log fold change against an independent per-group computation, the correlation edge
variants by hand, and the on-target direction check on simulated CRISPRi and CRISPRa groups."""
import dataclasses

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from analysis import protocols
from analysis.config import RunConfig, load_config
from analysis.errors import ConfigError, InputError
from analysis.io.cells import from_anndata
from analysis.io.expression import expression_matrix
from analysis.scoring.edges import EdgeScores, correlation_variants, spearman_edges
from analysis.scoring.panel import evaluation_universe, select_panel
from analysis.scoring.perturbation import differential_expression, on_target_check

# Written from the paper (section / note in the comment), not from analysis/protocols.py.
PAPER_K562 = {
    "extraction.cells": "control",                  # 2.5: 2,000 K562 control cells
    "extraction.n_cells": 2000,                     # 2.5, SN6.2: one draw of 2,000 controls for everything
    "perturbation.n_control": 2000,                 # SN6.2 primary parameterisation
    "perturbation.test": "welch",                   # SN6.2: Welch's t-test with BH-FDR
    "perturbation.location_test": "ttest",          # SN16.2: one-sample (14), t-test (18), paired (21, 23)
    "perturbation.lfc_threshold": 0.5,              # SN6.2: LFC 0.5
    "perturbation.alpha": 0.05,
    "perturbation.universe": "hvg",                 # 4.3: HVG (K562)
    "perturbation.universe_size": 2000,             # 4.3, SN14.9: top 2,000 HVGs
    "perturbation.modality": "crispri",             # Replogle K562 CRISPRi
    "perturbation.correlation_edge": "signed",      # "Spearman correlation"
    "ablation.n_cells": 2000,                       # 2.5
    "ablation.ks": (5, 10, 20, 50),                 # 2.5: top-5, 10, 20, 50
    "cssi.confirmatory_metric": "f1",               # 2.2: CSSI improves top-k F1 over pooled
}


def _value(cfg, key):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


@pytest.mark.parametrize("name, changes", [
    ("paper-k562", {}),
    ("paper-rpe1", {"perturbation.universe": "hvg_plus_perturbed"}),     # 2.6, SN14.9: perturbed genes forced in
    ("paper-crispra", {"perturbation.modality": "crispra"}),             # Adamson K562 CRISPRa
    ("paper-k562-lenient", {"perturbation.test": "mannwhitney", "perturbation.lfc_threshold": 0.1,   # SN6.5
                            "perturbation.universe_size": 1000, "perturbation.n_control": 500}),
])
def test_protocol_presets_match_the_paper(name, changes):
    cfg = load_config(cli={"protocol": name}, environ={})
    assert cfg.protocol == name
    for key, value in {**PAPER_K562, **changes}.items():
        assert _value(cfg, key) == value, key
    grid = (cfg.perturbation.grid_lfc, cfg.perturbation.grid_n_control, cfg.perturbation.grid_universe_size)
    assert [len(axis) for axis in grid] == [3, 3, 3]                   # SN6.3: 27 conditions
    assert {0.1, 0.5} <= set(grid[0]) and {500, 2000} <= set(grid[1]) and {1000, 2000} <= set(grid[2])  # SN6.5
    assert cfg.extraction.panel_size >= cfg.perturbation.universe_size
    assert protocols.deviations(cfg) == []
    assert protocols.readout_layer_for(name, "Geneformer-V2-316M") == 13      # 2.3: L13 pre-specified
    assert protocols.readout_layer_for(name, "Geneformer-V1-10M") is None


def test_overrides_win_over_the_protocol_and_are_listed():
    cfg = load_config(cli={"protocol": "paper-k562", "perturbation.lfc_threshold": "1.0"}, environ={})
    assert cfg.perturbation.lfc_threshold == 1.0 and cfg.perturbation.n_control == 2000
    assert protocols.deviations(cfg) == [{"setting": "perturbation.lfc_threshold", "paper": 0.5, "run": 1.0,
                                          "source": protocols.PROTOCOLS["paper-k562"]["perturbation.lfc_threshold"][1]}]
    assert load_config(cli={}, environ={}).protocol == "none" and protocols.deviations(RunConfig()) == []
    with pytest.raises(ConfigError, match="protocol 'paper-x' is not known"):
        load_config(cli={"protocol": "paper-x"}, environ={})


def _cells(counts: np.ndarray, symbols: list[str], labels: list[str]):
    adata = ad.AnnData(sp.csr_matrix(counts.astype(np.float32)),
                       obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]),
                       var=pd.DataFrame({"gene_ids": [f"ENSG{i:05d}" for i in range(len(symbols))]}, index=symbols))
    return from_anndata(adata, perturbation_col="perturbation")


@pytest.fixture
def hand_screen():
    """6 genes with hand-set spreads; A is perturbed (a mild knock-down) but the least variable."""
    rng = np.random.default_rng(0)
    n = 40
    spread = {"A": 0, "B": 60, "C": 30, "D": 15, "E": 8, "F": 4}
    counts = np.column_stack([rng.poisson(5, n) + (rng.random(n) < 0.5) * s for s in spread.values()])
    counts[:, 0] = 50
    labels = ["control"] * 30 + ["A"] * 10
    counts[30:, 0] = 40                                            # knock-down of A
    return _cells(counts, list(spread), labels)


def test_universe_options_against_hand_built_gene_sets(hand_screen):
    cells = hand_screen
    genes = pd.DataFrame({"gene_id": cells.gene_ids, "symbol": cells.symbols})
    present = np.ones(len(genes))
    x = expression_matrix(cells, cells.gene_ids)
    by_variance = list(cells.symbols[np.argsort(-x.var(0), kind="stable")])
    symbols = genes["symbol"].to_numpy()
    assert evaluation_universe(cells, genes, present, "panel", 3) is None
    hvg = evaluation_universe(cells, genes, present, "hvg", 3)
    assert by_variance[-1] == "A"
    assert list(symbols[hvg]) == by_variance[:3] and "A" not in symbols[hvg]
    forced = evaluation_universe(cells, genes, present, "hvg_plus_perturbed", 3)
    assert list(symbols[forced]) == by_variance[:3] + ["A"]
    panel = select_panel(cells, genes, present, reference_tfs=set(), n_hvg=6, panel_size=5, universe=forced)
    assert set(panel.loc[panel["in_universe"], "symbol"]) == set(by_variance[:3]) | {"A"}
    assert len(panel) == 5 and (~panel["in_universe"]).sum() == 1
    with pytest.raises(InputError, match="must cover the evaluation universe"):
        select_panel(cells, genes, present, reference_tfs=set(), n_hvg=6, panel_size=3, universe=forced)


def test_scanpy_log_fold_change_against_an_independent_group_computation(hand_screen):
    cells = hand_screen
    universe = pd.DataFrame({"gene_id": cells.gene_ids, "symbol": cells.symbols})
    x = pd.DataFrame(expression_matrix(cells, cells.gene_ids), columns=list(cells.symbols))
    means = x.groupby(cells.obs["perturbation"].to_numpy()).mean()
    expected = np.log2((np.expm1(means.loc["A"]) + 1e-9) / (np.expm1(means.loc["control"]) + 1e-9))
    got = differential_expression(cells, universe, lfc_threshold=0.0).table.set_index("symbol")["lfc"]
    assert np.allclose(got[list(cells.symbols)], expected[list(cells.symbols)], rtol=1e-9)
    old = differential_expression(cells, universe, lfc="log1p_mean_difference").table.set_index("symbol")["lfc"]
    assert np.allclose(old[list(cells.symbols)], (means.loc["A"] - means.loc["control"]) / np.log(2))


def test_correlation_variants_by_hand():
    panel = pd.DataFrame({"symbol": ["P", "U", "V", "W"], "gene_id": ["p", "u", "v", "w"]})
    rho = np.array([[1, 0.6, -0.5, 0.2], [0.6, 1, 0, 0], [-0.5, 0, 1, 0], [0.2, 0, 0, 1]], float)
    corr = EdgeScores(rho[None], pd.DataFrame({"edge_type": ["spearman"], "layer": [-1], "head": [-1]}),
                      np.ones((4, 4), bool), panel, {})
    de = pd.DataFrame({"perturbation": "P", "symbol": ["U", "V", "W"], "lfc": [-1.0, 2.0, 0.5]})
    variants = correlation_variants(corr, de, "crispri")
    assert list(variants.sources["edge_type"]) == ["spearman", "spearman_absolute", "spearman_sign_matched"]
    assert np.array_equal(variants.scores[1], np.abs(rho))
    # knock-down of P: U (rho +0.6) should fall and did; V (rho -0.5) should rise and did; W (+0.2) should fall, rose
    assert np.allclose(variants.scores[2][0, 1:], [0.6, 0.5, -0.2])
    assert np.array_equal(variants.scores[2][1:], rho[1:])
    activated = correlation_variants(corr, de, "crispra")
    assert np.allclose(activated.scores[2][0, 1:], [-0.6, -0.5, 0.2])


def test_on_target_direction_on_simulated_crispri_and_crispra_groups():
    rng = np.random.default_rng(1)
    base = rng.poisson(8, (60, 3)).astype(float)
    labels = ["control"] * 30 + ["G1"] * 10 + ["G2"] * 10 + ["G3"] * 10
    counts = base.copy()
    counts[30:40, 0] = rng.poisson(1, 10)      # G1 knocked down
    counts[40:50, 1] = rng.poisson(40, 10)     # G2 activated
    cells = _cells(counts, ["G1", "G2", "OTHER"], labels)
    crispri = on_target_check(cells, "crispri").set_index("perturbation")
    assert crispri.loc["G1", "status"] == "passed" and crispri.loc["G2", "status"] == "failed"
    assert crispri.loc["G3", "status"] == "not measured" and crispri.loc["G1", "expected"] == "down"
    crispra = on_target_check(cells, "crispra").set_index("perturbation")
    assert crispra.loc["G1", "status"] == "failed" and crispra.loc["G2", "status"] == "passed"
    assert crispra.loc["G2", "on_target_lfc"] > 1


def test_failed_on_target_perturbations_leave_the_confirmatory_tests():
    """A knock-down screen scored as CRISPRa: every group fails its on-target check, so no perturbation-first test is
    confirmatory; scored as CRISPRi the same screen keeps them."""
    from analysis.config import PerturbationConfig, SimulationConfig
    from analysis.io.references import ReferenceNetwork
    from analysis.sim.simulate import simulate_screen
    from analysis.stages.perturbation import run

    adata, net = simulate_screen(SimulationConfig(n_cells=400, n_perturbed=4, seed=2))
    cells = from_anndata(adata, perturbation_col="perturbation")
    g = len(net.symbols)
    panel = pd.DataFrame({"gene_index": np.arange(g), "gene_id": list(net.gene_ids), "symbol": list(net.symbols),
                          "in_universe": True})
    rng = np.random.default_rng(0)
    attention = EdgeScores(rng.random((1, g, g)), pd.DataFrame({"edge_type": ["attention_layer_mean"], "layer": [0],
                                                                  "head": [-1]}), np.ones((g, g), bool), panel, {})
    edges = net.edges()
    reference = ReferenceNetwork("truth", edges.assign(reference="truth", mode="", confidence=""), {})
    cfg = PerturbationConfig(n_boot=5, n_degree_null=3, grid_lfc=(0.5,), grid_control_fraction=(1.0,),
                             grid_universe_fraction=(1.0,))
    corr = spearman_edges(cells.controls(), panel)
    kept = run(cells, panel, None, attention, corr, [reference], cfg)
    assert (kept.tables["on_target"]["status"] == "passed").all() and kept.params["n_evaluable"] > 0
    assert any(t["confirmatory"] for t in kept.registry.table().to_dict("records")
               if t["analysis"] == "perturbation_first")
    flipped = run(cells, panel, None, attention, corr, [reference], dataclasses.replace(cfg, modality="crispra"))
    assert (flipped.tables["on_target"]["status"] == "failed").all()
    assert flipped.params["n_evaluable"] == 0
    assert not any(t["analysis"] == "perturbation_first" for t in flipped.registry.table().to_dict("records"))


def test_perturbed_genes_left_out_of_the_panel_are_named_with_their_reason():
    """Evaluable perturbations depend on the panel: a perturbed gene the data lacks, one no cell expresses, and one cut
    because the panel was full are each listed with why (the log, the manifest and the Perturbation page show it)."""
    from analysis.scoring.panel import describe_left_out, perturbations_left_out

    rng = np.random.default_rng(1)
    symbols = ["A", "B", "C", "D", "E"]
    counts = rng.poisson(5, (40, 5)) + 1
    counts[:, 3] = 0                                                     # D: never expressed
    labels = ["control"] * 20 + ["A"] * 5 + ["B"] * 5 + ["D"] * 5 + ["Z"] * 5   # Z: not a gene of the data
    cells = _cells(counts, symbols, labels)
    genes = pd.DataFrame({"gene_id": cells.gene_ids, "symbol": cells.symbols})
    present = (expression_matrix(cells, cells.gene_ids) > 0).sum(0)
    panel = select_panel(cells, genes, present, reference_tfs=set(), n_hvg=5, panel_size=1)
    assert list(panel["symbol"]) == ["A"]                                 # perturbed genes in gene order, cut at 1
    left = perturbations_left_out(cells, genes, present, panel, 1).set_index("perturbation")["reason"]
    assert set(left.index) == {"B", "D", "Z"}
    assert left["B"].startswith("cut: the 1-gene panel was full") and "--panel-size" in left["B"]
    assert left["D"].startswith("in no cell's model input")
    assert left["Z"].startswith("not a vocabulary gene")
    line = describe_left_out(perturbations_left_out(cells, genes, present, panel, 1), names=1)
    assert line.startswith("cut: the 1-gene panel") and ": B (1)" in line and ": D (1)" in line and ": Z (1)" in line
    wide = select_panel(cells, genes, present, reference_tfs=set(), n_hvg=5, panel_size=5)
    assert set(perturbations_left_out(cells, genes, present, wide, 5)["perturbation"]) == {"D", "Z"}


@pytest.mark.parametrize("combined", ["A+B", "A_B", "A|B"])
def test_a_combinatorial_label_is_listed_as_a_combination_never_as_an_unknown_gene(combined):
    """scPerturb and the combinatorial screens write two genes perturbed together as A+B, A_B or A|B: such a label is
    left out as a combination (its genes are scored from their own single-perturbation cells), not as a gene the
    data lacks; a label whose parts are not all genes of the data stays an unknown gene."""
    from analysis.scoring.panel import combination_parts, perturbations_left_out

    rng = np.random.default_rng(2)
    symbols = ["A", "B", "C", "D", "E"]
    labels = ["control"] * 20 + ["A"] * 5 + ["B"] * 5 + [combined] * 5 + ["A+Q"] * 5
    cells = _cells(rng.poisson(5, (40, 5)) + 1, symbols, labels)
    genes = pd.DataFrame({"gene_id": cells.gene_ids, "symbol": cells.symbols})
    present = (expression_matrix(cells, cells.gene_ids) > 0).sum(0)
    panel = select_panel(cells, genes, present, reference_tfs=set(), n_hvg=5, panel_size=5)
    assert {"A", "B"} <= set(panel["symbol"])                          # the single perturbations are scored
    left = perturbations_left_out(cells, genes, present, panel, 5).set_index("perturbation")["reason"]
    assert left[combined] == "a combination of perturbations: only single perturbations are scored"
    assert left["A+Q"].startswith("not a vocabulary gene")            # Q is not a gene of the data
    assert combination_parts(combined, {"A", "B"}) == ["A", "B"] and combination_parts("A", {"A"}) is None


def test_the_attention_cells_are_one_seeded_draw_and_de_can_use_the_same_controls(hand_screen):
    """``extraction.n_cells``: at most that many of the selected cells, one seeded draw; DE given those control
    cells equals DE on a screen holding only them as controls (an independent path: the subset, then every
    control)."""
    cells = hand_screen
    controls = cells.select("control")
    drawn = cells.select("control", 12, seed=3)
    assert drawn.size == 12 and set(drawn) <= set(controls) and np.all(np.diff(drawn) > 0)
    assert np.array_equal(drawn, cells.select("control", 12, seed=3))
    assert not np.array_equal(drawn, cells.select("control", 12, seed=4))
    assert np.array_equal(cells.select("control", 500), controls)
    universe = pd.DataFrame({"gene_id": cells.gene_ids, "symbol": cells.symbols})
    shared = differential_expression(cells, universe, lfc_threshold=0.1, control_cells=drawn)
    perturbed = np.nonzero(cells.obs["perturbation"].to_numpy() != "control")[0]
    alone = differential_expression(cells.subset(np.sort(np.concatenate([drawn, perturbed]))), universe,
                                    lfc_threshold=0.1)
    pd.testing.assert_frame_equal(shared.table, alone.table)
    assert shared.params["n_control"] == 12
    with pytest.raises(ValueError, match="control-labelled"):
        differential_expression(cells, universe, control_cells=perturbed[:3])


def test_each_sensitivity_grid_condition_builds_its_own_universe_controls_and_correlation_edges():
    """SN6.3's grid: a universe level larger than the run's universe holds that many genes (not merged into it), the
    control axis moves the correlation edges with DE's controls, and one condition's correlation AUROCs equal an
    independent computation (scipy's Spearman on that condition's control cells and genes, scikit-learn's AUROC);
    attention is scored on the universe genes the panel holds; TF and non-TF perturbations are split."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    from analysis.config import PerturbationConfig, SimulationConfig
    from analysis.scoring.edges import combine
    from analysis.scoring.registry import StatsRegistry
    from analysis.sim.simulate import simulate_screen
    from analysis.stages.perturbation import grid_controls, grid_universes, sensitivity_grid

    adata, net = simulate_screen(SimulationConfig(n_cells=500, n_perturbed=6, seed=4))
    cells = from_anndata(adata, perturbation_col="perturbation")
    g = len(net.symbols)
    universe = [int(i) for i in evaluation_universe(cells, pd.DataFrame({"gene_id": list(net.gene_ids),
                                                                          "symbol": list(net.symbols)}),
                                                    np.ones(g), "hvg", 40)]
    panel = pd.DataFrame({"gene_index": universe, "gene_id": np.asarray(net.gene_ids)[universe],
                          "symbol": np.asarray(net.symbols)[universe], "in_universe": True})
    attention = EdgeScores(np.random.default_rng(0).random((1, len(panel), len(panel))),
                           pd.DataFrame({"edge_type": ["attention_layer_mean"], "layer": [0], "head": [-1]}),
                           np.ones((len(panel), len(panel)), bool), panel, {})
    cfg = PerturbationConfig(universe="hvg", universe_size=40, grid_lfc=(0.25, 0.5), grid_n_control=(40, 80),
                             grid_universe_size=(20, 40, 80), n_boot=5)
    tfs = frozenset(list(net.symbols[:2]))
    grid = sensitivity_grid(cells, panel, combine(attention), cfg, StatsRegistry(), tfs=tfs)
    spearman = grid[(grid["edge_type"] == "spearman") & (grid["perturbations"] == "all")]
    assert spearman[["lfc_threshold", "n_control", "universe_size"]].drop_duplicates().shape[0] == 12
    assert sorted(spearman["n_genes"].unique()) == [20, 40, 80]            # 80 > the run's 40-gene universe
    empty = spearman[spearman["n_evaluable"] == 0]                          # kept, and said to be empty
    assert empty["mean_auroc"].isna().all() and (spearman.loc[spearman["n_evaluable"] > 0, "mean_auroc"] > 0).all()
    att = grid[(grid["edge_type"] == "attention_layer_mean") & (grid["perturbations"] == "all")]
    assert att["n_genes"].max() == 40                                        # the panel holds 40 of the 80
    assert set(grid["perturbations"]) >= {"all", "non-TF"}

    controls = grid_controls(cells, [40], None, cfg.seed)[40]
    labels = cells.obs["perturbation"].astype(str).to_numpy()
    assert controls.size == 40 and (labels[controls] == "control").all()
    genes = grid_universes(cells, panel, cfg)[80]
    x = expression_matrix(cells.subset(controls), genes["gene_id"].to_numpy())
    rho = np.nan_to_num(spearmanr(x).statistic, nan=0.0)
    de = differential_expression(cells, genes, lfc_threshold=0.5, control_cells=controls, seed=cfg.seed).table
    index = {s: i for i, s in enumerate(genes["symbol"])}
    expected = []
    for pert, tab in de[~de["is_self"]].groupby("perturbation"):
        if pert in index and 0 < tab["is_de"].sum() < len(tab):
            expected.append(roc_auc_score(tab["is_de"], rho[index[pert], tab["symbol"].map(index)]))
    cell = spearman[(spearman["lfc_threshold"] == 0.5) & (spearman["n_control"] == 40)
                    & (spearman["universe_size"] == 80)]
    assert cell["n_evaluable"].iloc[0] == len(expected)
    assert cell["mean_auroc"].iloc[0] == pytest.approx(np.mean(expected))
    other = spearman[(spearman["lfc_threshold"] == 0.5) & (spearman["n_control"] == 80)
                     & (spearman["universe_size"] == 80)]
    assert other["mean_auroc"].iloc[0] != pytest.approx(np.mean(expected))   # other controls, other edges and DE


def test_a_screen_whose_perturbation_type_names_the_other_modality_is_refused_before_anything_runs():
    """scPerturb's obs['perturbation_type']: CRISPRa on every perturbed cell under the default crispri modality
    would fail every on-target check; the run is refused with the setting to pass. Mixed or non-CRISPR types are
    left to the modality setting."""
    from analysis.stages.inputs import check_modality

    labels = ["control"] * 10 + ["A"] * 5 + ["B"] * 5
    cells = _cells(np.random.default_rng(3).poisson(5, (20, 3)) + 1, ["A", "B", "C"], labels)
    typed = dataclasses.replace(cells, obs=cells.obs.assign(perturbation_type=["control"] * 10 + ["CRISPRa"] * 10))
    with pytest.raises(InputError, match=r"every perturbed cell is crispra.*--set perturbation.modality=crispra"):
        check_modality(typed, "crispri")
    check_modality(typed, "crispra")
    mixed = dataclasses.replace(cells, obs=cells.obs.assign(perturbation_type=["control"] * 10 + ["CRISPRa"] * 5
                                                            + ["CRISPRi"] * 5))
    check_modality(mixed, "crispri")
    check_modality(cells, "crispri")                                   # no such column
