"""Layer-wise biological organisation (SN17) on a planted structure, checked against brute-force pair lists, sklearn,
scipy and statsmodels; the real STRING subset's loader; cross-context replication and the SN14.9 summary against
numpy / scipy computations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy.stats import mannwhitneyu, spearmanr, wilcoxon
from sklearn.metrics import roc_auc_score

from analysis.errors import InputError
from analysis.io.references import ReferenceNetwork, coregulation_pairs, load_pair_reference, load_string
from analysis.scoring import biology, replication
from analysis.scoring.edges import EdgeScores
from tests.conftest import shared_path

G, N_LAYERS = 30, 4


def panel(in_universe=None) -> pd.DataFrame:
    return pd.DataFrame({"symbol": [f"G{i}" for i in range(G)],
                         "in_universe": np.ones(G, bool) if in_universe is None else in_universe})


def reference(name: str, pairs: list[tuple[int, int]], undirected: bool) -> ReferenceNetwork:
    edges = pd.DataFrame({"reference": name, "tf": [f"G{a}" for a, _ in pairs], "target": [f"G{b}" for _, b in pairs],
                          "mode": "undirected" if undirected else "Activation", "confidence": "NA"})
    return ReferenceNetwork(name, edges, {"undirected": undirected})


@pytest.fixture
def planted(rng):
    """PPI signal strongest at layer 0 and fading with depth; regulatory signal growing with depth; a few genes
    outside the universe and a pair never co-observed."""
    all_pairs = [(a, b) for a in range(G) for b in range(a + 1, G)]
    pick = rng.permutation(len(all_pairs))
    ppi = [all_pairs[i] for i in pick[:40]]
    reg = [(b, a) if rng.random() < 0.5 else (a, b) for a, b in (all_pairs[i] for i in pick[40:70])]
    scores = rng.normal(0, 1, (N_LAYERS, G, G))
    for layer in range(N_LAYERS):
        for a, b in ppi:
            scores[layer, a, b] += 1.5 * (N_LAYERS - 1 - layer) / (N_LAYERS - 1)
        for a, b in reg:
            scores[layer, a, b] += 3.0 * layer / (N_LAYERS - 1)   # one orientation: halved by symmetrising
    observed = np.ones((G, G), dtype=bool)
    observed[0, 1] = observed[1, 0] = False
    sources = pd.DataFrame({"edge_type": "attention_layer_mean", "layer": range(N_LAYERS), "head": -1})
    univ = np.ones(G, bool)
    univ[-3:] = False
    att = EdgeScores(scores, sources, observed, panel(univ), {})
    expr = rng.normal(size=(G, G))
    rho = (expr + expr.T) / 4
    corr = EdgeScores(rho[None], pd.DataFrame({"edge_type": ["spearman"], "layer": -1, "head": -1}),
                      np.ones((G, G), bool), panel(univ), {})
    return att, corr, reference("PPI", ppi, True), reference("REG", reg, False)


def brute_pairs(att: EdgeScores):
    genes = [i for i in range(G) if att.panel["in_universe"][i]]
    return [(a, b) for a in genes for b in genes if a < b and att.observed[a, b]]


def test_layer_profiles_equal_sklearn_on_a_brute_force_pair_list_and_show_the_planted_organisation(planted):
    att, corr, ppi, reg = planted
    profiles = biology.layer_profiles(att, corr, [ppi, reg])
    pairs = brute_pairs(att)
    for ref, member in ((ppi, {frozenset(p) for p in ppi.pairs()}), (reg, {frozenset(p) for p in reg.pairs()})):
        y = np.array([frozenset((f"G{a}", f"G{b}")) in member for a, b in pairs])
        for layer in range(N_LAYERS):
            s = [(att.scores[layer, a, b] + att.scores[layer, b, a]) / 2 for a, b in pairs]
            got = profiles.query("reference == @ref.name and layer == @layer")["auroc"].iloc[0]
            assert got == pytest.approx(roc_auc_score(y, s))
        rho = [corr.scores[0, a, b] for a, b in pairs]
        got = profiles.query("reference == @ref.name and edge_type == 'spearman'")["auroc"].iloc[0]
        assert got == pytest.approx(roc_auc_score(y, rho))
    assert set(profiles["kind"]) == {"pairs", "regulatory"}
    tests = {r["hypothesis"]: r for r in biology.biology_tests(profiles, pd.DataFrame(columns=[
        "reference", "layer", "r_raw", "r_partial", "p_partial", "retained", "n"]), pd.DataFrame(columns=[
            "layer", "correlation", "rho", "p", "n"])).rows}
    assert tests["PPI recovery trends with depth"]["effect"] == pytest.approx(-1.0)
    assert tests["REG recovery trends with depth"]["effect"] == pytest.approx(1.0)
    assert tests["PPI and REG layer profiles correlate"]["effect"] == pytest.approx(-1.0)   # anti-correlated


def test_partial_spearman_equals_statsmodels_residual_correlation(rng):
    z = rng.normal(size=300)
    x = z + rng.normal(size=300)
    y = (z + rng.normal(size=300) > 0.5).astype(float)
    raw, partial, p = biology.partial_spearman(x, y, z)
    ranks = [pd.Series(v).rank().to_numpy() for v in (x, y, z)]
    design = sm.add_constant(ranks[2])
    rx, ry = (sm.OLS(r, design).fit().resid for r in ranks[:2])
    assert raw == pytest.approx(spearmanr(x, y).statistic)
    assert partial == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    fit = sm.OLS(ranks[0], sm.add_constant(np.column_stack([ranks[2], ranks[1]]))).fit()
    assert p == pytest.approx(fit.pvalues[2], rel=1e-6)   # the t test of y's coefficient given z: same df n - 3


def test_expression_control_and_agreement_on_the_planted_structure(planted):
    att, corr, ppi, reg = planted
    control = biology.expression_control(att, corr, [ppi], n_negatives=5)
    n_pos = biology.layer_profiles(att, corr, [ppi])["n_pos"].iloc[0]
    assert n_pos < 40 and (control["n"] == 6 * n_pos).all()    # positives in the universe + 5 negatives each
    first = control[control["layer"] == 0].iloc[0]
    assert first["r_raw"] > 0.3 and first["retained"] > 0.8      # the planted signal is not expression similarity
    agreement = biology.attention_expression_agreement(att, corr)
    pairs = brute_pairs(att)
    a = [(att.scores[2, i, j] + att.scores[2, j, i]) / 2 for i, j in pairs]
    rho = [corr.scores[0, i, j] for i, j in pairs]
    row = agreement.query("layer == 2 and correlation == 'signed'").iloc[0]
    assert row["rho"] == pytest.approx(spearmanr(a, rho).statistic) and row["n"] == len(pairs)


def test_string_subset_loads_at_the_paper_threshold_and_bad_tables_are_refused(tmp_path):
    path = shared_path("regulatory/string_v12_ppi_subset_208immune_genes.tsv")
    raw = pd.read_csv(path, sep="\t")
    ref = load_pair_reference(f"string:{path}")
    kept = raw[raw["score"] >= 0.7]
    assert ref.params["undirected"] and ref.name == "STRING>=700"
    assert len(ref.edges) == len(kept.drop_duplicates(["gene_a", "gene_b"]))
    assert len(load_string(path, 0.4).edges) > len(ref.edges)
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\tscore\nX\tY\t0.9\n")
    with pytest.raises(InputError, match="needs columns"):
        load_string(bad)
    with pytest.raises(InputError, match="KIND:PATH"):
        load_pair_reference(str(path))
    reg = reference("R", [(0, 1), (0, 2), (0, 3), (4, 2)], False)
    co = coregulation_pairs(reg)
    assert co.pairs() == {("G1", "G2"), ("G1", "G3"), ("G2", "G3")}


def per_pert_table(rng, n: int, shift: float) -> pd.DataFrame:
    rows = []
    for p in range(n):
        corr = rng.uniform(0.5, 0.7)
        rows.append((f"P{p}", "spearman", -1, -1, corr))
        for layer in range(3):
            rows.append((f"P{p}", "attention_layer_mean", layer, -1, corr + shift * layer + rng.normal(0, 0.05)))
    frame = pd.DataFrame(rows, columns=["perturbation", "edge_type", "layer", "head", "auroc"])
    return frame.assign(n_pos=5, n_neg=50)


def test_replication_advantage_and_tests_against_numpy_and_scipy(rng):
    runs = {"K562": {"per_pert": per_pert_table(rng, 30, 0.0), "correlation_edge": "spearman", "readout_layer": 2,
                     "n_layers": 3},
            "RPE1": {"per_pert": per_pert_table(rng, 40, 0.05), "correlation_edge": "spearman", "readout_layer": 2,
                     "n_layers": 3}}
    table, tests = replication.replicate(runs, n_boot=4000)
    for label, r in runs.items():
        per = r["per_pert"].pivot_table(index="perturbation", columns=["edge_type", "layer"], values="auroc")
        diff = (per[("attention_layer_mean", 2)] - per[("spearman", -1)]).to_numpy()
        row = table.query("run == @label and layer == 2").iloc[0]
        assert row["advantage"] == pytest.approx(diff.mean())
        assert row["p"] == pytest.approx(wilcoxon(diff).pvalue)
        se = diff.std(ddof=1) / np.sqrt(diff.size)
        assert row["ci_low"] == pytest.approx(diff.mean() - 1.96 * se, abs=0.6 * se)
        assert row["ci_high"] == pytest.approx(diff.mean() + 1.96 * se, abs=0.6 * se)
        assert row["relative_depth"] == 1.0
    rpe1 = table.query("run == 'RPE1' and layer == 2").iloc[0]
    assert rpe1["ci_low"] > 0 and rpe1["share_attention_better"] > 0.9
    between = tests[tests["hypothesis"] == "read-out advantage differs: K562 vs RPE1"].iloc[0]
    adv = {k: replication.per_perturbation_advantage(r["per_pert"], "spearman", 2).to_numpy() for k, r in runs.items()}
    assert between["p"] == pytest.approx(mannwhitneyu(adv["K562"], adv["RPE1"]).pvalue)
    # confirmatory: each run's read-out layer and the planned between-context comparison
    assert tests["confirmatory"].sum() == 3 and tests.loc[tests["confirmatory"], "q"].notna().all()
    assert between["confirmatory"] and tests.loc[~tests["confirmatory"], "q"].isna().all()


def test_universe_protocol_summary(rng):
    rows = []
    for protocol, shift, n_genes in (("run", 0.0, 240), ("hvg_only", 0.04, 228)):
        for p in range(12):
            for layer in range(2):
                rows.append((protocol, f"P{p}", layer, 0.6 + shift + rng.normal(0, 0.02), 0.6, n_genes))
    check = pd.DataFrame(rows, columns=["protocol", "perturbation", "layer", "attention_auroc", "correlation_auroc",
                                        "n_genes"])
    out = replication.universe_protocols(check, n_boot=2000)
    assert set(out["protocol"]) == {"run", "hvg_only"} and set(out["n_genes"]) == {240, 228}
    moved = check.assign(adv=check["attention_auroc"] - check["correlation_auroc"]).pivot_table(
        index=["perturbation", "layer"], columns="protocol", values="adv")
    diff = (moved["hvg_only"] - moved["run"]).xs(0, level="layer").to_numpy()
    assert out.query("layer == 0")["p_protocol"].iloc[0] == pytest.approx(wilcoxon(diff).pvalue)
