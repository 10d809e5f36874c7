"""Ablation read-outs of both model families against hand computations on tiny random models: the behaviour loss
(Geneformer masked-gene cross-entropy, scGPT masked-value MSE) under an intervention done by weight surgery, the
fidelity profile, the read-out attention, and the sweep's design."""
import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.interp.ablation import SweepItem, ablate, prepare, run_interventions, sweep, zero_heads
from analysis.interp.attention import extract_attention
from analysis.interp.interventions import InterventionSpec
from analysis.io.references import ReferenceNetwork
from analysis.models.base import masked_positions
from analysis.scoring.ablation import structural_null, summarise
from analysis.scoring.heads import attention_entropy, composite_order
from analysis.scoring.registry import ablation_tests
from analysis.scoring.ranking import evaluable_universe

FAMILIES = ("geneformer", "scgpt")


@pytest.fixture(scope="module")
def settings(family_setups, small_screen):
    _, net, _ = small_screen
    ref = ReferenceNetwork("truth", net.edges().assign(reference="truth", confidence="NA"), {})
    out = {}
    for family, (adapter, tokens, panel) in family_setups.items():
        inputs = prepare(tokens, panel, readout_layer=1, n_cells=20, seed=1)
        out[family] = (adapter, inputs, panel, evaluable_universe(panel, ref, np.ones((len(panel),) * 2, bool)))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_fixed_masking_is_seeded_and_masks_every_cell(settings, family):
    _, inputs, *_ = settings[family]
    again = masked_positions(inputs.tokens, seed=1)
    assert np.array_equal(again, inputs.chosen) and (inputs.chosen.sum(1) >= 1).all()
    assert not inputs.chosen[~inputs.tokens.gene_positions()].any()   # never pad or <cls>


def zero_mlp_by_surgery(adapter, layer):
    a = copy.deepcopy(adapter)
    lin = a.model.bert.encoder.layer[layer].output.dense if a.family == "geneformer" else \
        a.model.transformer_encoder.layers[layer].linear2
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
    return a


def behaviour_by_hand(adapter, tokens, chosen):
    """Per cell, one cell at a time with no padding: Geneformer's cross-entropy of the <mask>-ed genes; scGPT's
    ``sum((pred - bin)^2 mask) / sum(mask)`` of the expression decoder with the masked values set to -1."""
    out = []
    for c in range(tokens.n_cells):
        n = int(tokens.lengths[c])
        hit = torch.as_tensor(chosen[c, :n])
        ids = torch.as_tensor(tokens.input_ids[c:c + 1, :n])
        keep = torch.ones_like(ids)
        with torch.no_grad():
            if adapter.family == "geneformer":
                masked = torch.where(hit, tokens.params["mask_id"], ids[0])[None]
                logits = adapter.model(input_ids=masked, attention_mask=keep).logits[0]
                out.append(torch.nn.functional.cross_entropy(logits[hit], ids[0][hit]).item())
            else:
                values = torch.as_tensor(tokens.values[c, :n])
                pred = adapter.model(ids, torch.where(hit, -1.0, values)[None], keep).mlm_output[0]
                out.append((((pred - values) ** 2) * hit).sum().item() / hit.sum().item())
    return np.array(out)


@pytest.mark.parametrize("family", FAMILIES)
def test_behaviour_loss_and_fidelity_by_hand(settings, family):
    adapter, inputs, panel, universe = settings[family]
    item = SweepItem("mlp_layer", 1, 0, (InterventionSpec("zero_mlp", 0),))
    acc = ablate(adapter, inputs, [item], batch_size=6)
    results, fidelity = summarise(acc, [item], universe, len(panel), readout_layer=inputs.readout_layer)
    row = results[results["readout"] == "mlm_loss"].iloc[0]
    assert row["value"] == pytest.approx(behaviour_by_hand(zero_mlp_by_surgery(adapter, 0), inputs.tokens,
                                                           inputs.chosen).mean(), rel=1e-4)
    assert row["baseline"] == pytest.approx(behaviour_by_hand(adapter, inputs.tokens, inputs.chosen).mean(), rel=1e-4)
    assert row["delta"] != 0 and 0 <= row["p"] <= 1
    f = fidelity.set_index("layer")["hidden_cos_mean"]
    assert f[0] == pytest.approx(0, abs=1e-6) and f[1] > 1e-6 and f[2] > 1e-6   # embeddings untouched, layer 0 on
    assert {"mlm_loss", "mlm_accuracy", "output_cosine_distance", "reference_auroc"} <= set(results["readout"])


@pytest.mark.parametrize("family", FAMILIES)
def test_baseline_readout_attention_equals_store(settings, family):
    adapter, inputs, panel, _ = settings[family]
    acc = run_interventions(adapter, inputs, {}, batch_size=7)
    store = extract_attention(adapter, inputs.tokens, panel, batch_size=5, progress=False)
    g = len(panel)
    assert np.allclose(acc["baseline"].sums.reshape(g, g), store.layer_sums[1], atol=1e-6)   # the head mean
    assert np.array_equal(acc["baseline"].counts.reshape(g, g), store.counts)


def test_sweep_families_and_matching():
    order = [(l, h) for l in range(3) for h in range(4)][::-1]
    entropy = np.arange(12.0).reshape(3, 4)
    items = sweep(order, 3, readout_layer=2, ks=(1, 5, 20), n_random=3, seed=0,
                  random_matching=("none", "layer", "entropy"), entropy=entropy, composite_order=order[::-1],
                  whole_layers=(0, 1), mlp_blocks=[(1, 2)])
    fam = {(i.family, i.k, i.draw) for i in items}
    assert ("top_k", 12, -1) in fam and ("random_k", 5, 2) in fam and ("mlp_block", 2, 1) in fam
    assert {d for f, _, d in fam if f == "whole_layer"} == {0, 1} and ("mlp_layer", 1, 2) in fam
    top5 = next(i for i in items if i.family == "top_k" and i.k == 5)
    assert sum(len(s.heads) for s in top5.specs) == 5 and top5.specs == zero_heads(order[:5])
    assert next(i for i in items if i.family == "composite_top_k" and i.k == 5).specs == zero_heads(order[::-1][:5])
    assert all(sum(len(s.heads) for s in i.specs) == i.k for i in items if i.family.endswith("random_k"))
    for item in (i for i in items if i.family == "layer_matched_random_k"):
        drawn = {(s.layer, h) for s in item.specs for h in s.heads}
        top = set(order[:item.k])
        assert not drawn & top
        assert sorted(l for l, _ in drawn) == sorted(l for l, _ in top)
    # all 12 heads (k = 20 -> 12) leave nothing to match against; 4 of layer 2 + 1 of layer 1 can be matched
    assert not any(i.family.endswith("matched_random_k") and i.k == 12 for i in items)
    assert ("layer_matched_random_k", 5, 0) not in fam   # top-5 holds all 4 heads of layer 2: no match exists
    assert ("entropy_matched_random_k", 5, 2) in fam


def test_entropy_matched_draws_have_the_target_entropy_distribution():
    """Bimodal head entropies; the top-16 heads all sit in the low mode. Entropy-matched draws reproduce the
    targets' distribution (two-sample KS does not reject); unmatched draws do not (they span both modes)."""
    from scipy.stats import ks_2samp
    rng = np.random.default_rng(0)
    entropy = rng.permutation(np.concatenate([rng.normal(1.0, 0.1, 64), rng.normal(3.0, 0.1, 64)])).reshape(16, 8)
    low = [h for h in np.ndindex(16, 8) if entropy[h] < 2]
    order = [low[i] for i in rng.permutation(len(low))[:16]]
    order += [h for h in np.ndindex(16, 8) if h not in order]
    items = sweep(order, 16, readout_layer=15, ks=(16,), n_random=10, seed=1, random_matching=("none", "entropy"),
                  entropy=entropy)
    target = np.array([entropy[h] for h in order[:16]])

    def drawn(family):
        return np.array([entropy[s.layer, h] for i in items if i.family == family for s in i.specs for h in s.heads])
    matched, unmatched = drawn("entropy_matched_random_k"), drawn("random_k")
    assert matched.size == unmatched.size == 160
    assert ks_2samp(matched, target).pvalue > 0.05 and ks_2samp(unmatched, target).pvalue < 1e-3
    assert (matched < 2).all()
    assert not set(order[:16]) & {(s.layer, h) for i in items if i.family == "entropy_matched_random_k"
                                 for s in i.specs for h in s.heads}


def test_head_entropy_and_composite_order_by_hand():
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 5, size=(4, 4))
    counts[1, 2] = 0                               # a pair never co-observed
    counts[3] = 0                                  # a query row never observed
    sums = rng.uniform(0, 1, size=(2, 3, 4, 4)) * counts
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / counts, np.nan)
    got = attention_entropy(sums, counts)
    for l, h in np.ndindex(2, 3):
        rows = []
        for q in range(4):
            vals = [v for v in mean[l, h, q] if not np.isnan(v)]
            if vals:
                p = np.array(vals) / sum(vals)
                rows.append(-sum(x * np.log(x) for x in p))
        assert np.isclose(got[l, h], np.mean(rows))
    heads = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "value": [0.9, 0.8, 0.7, 0.6]})
    assert composite_order(heads, pd.Series({0: 0.5, 1: 0.8})) == [(1, 0), (1, 1), (0, 0), (0, 1)]


def test_ablation_layer_settings_are_checked():
    from analysis.config import load_config
    from analysis.errors import ConfigError
    from analysis.stages.inputs import check_ablation_layers
    cfg = load_config(cli={"ablation.mlp_blocks": ("2-3", "0+2"), "ablation.whole_layers": (1,)})
    check_ablation_layers(cfg.ablation, 4)
    with pytest.raises(ConfigError, match="names layer 3; the model has layers 0-2"):
        check_ablation_layers(cfg.ablation, 3)
    with pytest.raises(ConfigError, match="ablation.mlp_blocks entry 'x-y'"):
        load_config(cli={"ablation.mlp_blocks": ("x-y",)})
    with pytest.raises(ConfigError, match="ablation.random_matching = 'size'"):
        load_config(cli={"ablation.random_matching": ("size",)})


@pytest.mark.parametrize("family", FAMILIES)
def test_structural_nulls_are_flagged_and_exactly_zero(settings, family):
    """The read-out layer is 1 (of 2): interventions at layer 1 (heads, uniform attention, MLP) cannot change its
    attention (exactly zero change, flagged, not in BH); the same interventions at layer 0, alone or with one at
    layer 1, change it and are not flagged. Behaviour read-outs are never flagged."""
    adapter, inputs, panel, universe = settings[family]
    assert inputs.readout_layer == 1
    after = [SweepItem("whole_layer", 4, -1, zero_heads([(1, h) for h in range(adapter.n_heads)])),
             SweepItem("mlp_layer", 1, 1, (InterventionSpec("zero_mlp", 1),)),
             SweepItem("uniform_top_k", 1, -1, (InterventionSpec("uniform_head", 1, (0,)),))]
    before = [SweepItem("whole_layer", 4, -1, zero_heads([(0, h) for h in range(adapter.n_heads)])),
              SweepItem("mlp_layer", 1, 0, (InterventionSpec("zero_mlp", 0),)),
              SweepItem("uniform_top_k", 2, -1, (InterventionSpec("uniform_head", 0, (0,)),
                                                  InterventionSpec("uniform_head", 1, (0,))))]
    acc = ablate(adapter, inputs, after + before, batch_size=10)
    results, _ = summarise(acc, after + before, universe, len(panel), readout_layer=1)
    for item in after:
        assert np.array_equal(acc[item.key].sums, acc["baseline"].sums)
        rows = results[results["intervention"] == item.key].set_index("readout")
        assert rows.loc["reference_auroc", "structural"] and rows.loc["reference_auroc", "delta"] == 0
        assert not rows.loc["mlm_loss", "structural"] and np.isfinite(rows.loc["mlm_loss", "q"])
    for item in before:
        assert not np.allclose(acc[item.key].sums, acc["baseline"].sums)
        rows = results[results["intervention"] == item.key].set_index("readout")
        assert not rows["structural"].any()


def test_structural_tests_stay_out_of_the_registry():
    assert structural_null((InterventionSpec("zero_mlp", 3),), 3) and structural_null(
        (InterventionSpec("zero_head", 5, (0,)), InterventionSpec("zero_mlp", 3)), 3)
    assert not structural_null((InterventionSpec("zero_head", 2, (0,)), InterventionSpec("zero_mlp", 3)), 3)
    assert not structural_null((), 3)
    rows = [{"intervention": f"i{i}", "family": "top_k", "k": 1, "draw": -1, "readout": "perturbation_auroc",
             "value": 0.5, "baseline": 0.5, "delta": 0.0, "ci_low": 0, "ci_high": 0, "p": 1.0, "q": np.nan, "n": 9,
             "structural": flag} for i, flag in enumerate((True, False))]
    reg = ablation_tests(pd.DataFrame(rows))
    assert [r["hypothesis"] for r in reg.rows] == ["top_k k=1 (i1, 9 obs) changes perturbation_auroc"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("readout_layer", (0, 1))
def test_replayed_prefix_equals_the_full_forward_of_the_ablated_model(settings, family, readout_layer):
    """An MLP ablation at layer 1 replays layer 0 from the unablated pass (with it the read-out layer when that is
    0); its read-outs equal the unablated read-outs of a copy whose MLP 1 is zeroed by weight surgery, computed in
    full."""
    adapter, inputs, *_ = settings[family]
    inputs = dataclasses.replace(inputs, readout_layer=readout_layer)
    specs = (InterventionSpec("zero_mlp", 1),)
    got = run_interventions(adapter, inputs, {"mlp1": specs}, batch_size=6)["mlp1"]
    full = run_interventions(zero_mlp_by_surgery(adapter, 1), inputs, {}, batch_size=6)["baseline"]
    for name in ("loss", "accuracy", "sums", "target_recall"):
        assert np.allclose(getattr(got, name), getattr(full, name), rtol=1e-5, atol=1e-7, equal_nan=True), name
    assert (abs(got.hidden_cos[:, :2]) < 1e-6).all() and (got.hidden_cos[:, 2] > 1e-6).all()   # layer 0 unchanged
    assert got.output_cos.min() > 1e-6
