"""Feature edits through a residual-stream SAE (analysis.interp.feature_intervention) against a direct edit of the
activations inside the model: the layer's output is computed by hand (numpy TopK encode, ``x + (z' - z) W_dec^T`` at
gene positions) and forced into the model by a plain forward hook; behaviour, output distance and every gene's
prediction change must match, for both families. Scale 1 changes nothing (the error term is kept); the causal
specificity statistics (analysis.scoring.feature_effects) against pandas and scipy."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import mannwhitneyu

from analysis.interp.ablation import prepare
from analysis.interp.feature_intervention import run_feature_edits
from analysis.interp.interventions import FeatureEdit
from analysis.interp.sae import TopKSAE
from analysis.scoring.feature_effects import feature_edit_tests, summarise_feature_edits

LAYER = 0


def random_sae(d: int) -> TopKSAE:
    sae = TopKSAE(d, 4 * d, 3, seed=5)
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(-0.2, 0.2, 4 * d))
    return sae


def hand_edit(x: np.ndarray, sae: TopKSAE, features, scale) -> np.ndarray:
    """``x`` ``[n, d]`` with ``features`` scaled by ``scale`` through ``sae``, in numpy (float64)."""
    w_enc, b_enc = sae.W_enc.detach().double().numpy(), sae.b_enc.detach().double().numpy()
    w_dec, b_dec = sae.W_dec.detach().double().numpy(), sae.b_dec.detach().double().numpy()
    pre = (x - b_dec) @ w_enc.T + b_enc
    z = np.zeros_like(pre)
    top = np.argsort(-pre, axis=1, kind="stable")[:, :sae.k]
    np.put_along_axis(z, top, np.maximum(np.take_along_axis(pre, top, axis=1), 0), axis=1)
    edited = z.copy()
    edited[:, list(features)] *= scale
    return x + (edited - z) @ w_dec.T


def forced(adapter, batch, replacement: np.ndarray):
    """The model's output with layer ``LAYER``'s output replaced wholesale by ``replacement`` ``[b, s, d]``."""
    def hook(_module, _inputs, output):
        new = torch.as_tensor(replacement, dtype=(output[0] if isinstance(output, tuple) else output).dtype)
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    handle = adapter.module(adapter.sites.layer(LAYER)).register_forward_hook(hook)
    try:
        return adapter.forward(batch, decode=False)
    finally:
        handle.remove()


def direct(adapter, batch, sae, features, scale):
    """(output, hidden edited at every gene position of ``batch``) by hand."""
    hidden = adapter.forward(batch, output_hidden_states=True, decode=False).hidden_states[LAYER + 1].double().numpy()
    genes = batch.gene_index >= 0
    hidden[genes] = hand_edit(hidden[genes], sae, features, scale)
    return forced(adapter, batch, hidden)


@pytest.mark.parametrize("family", ["geneformer", "scgpt"])
def test_a_feature_edit_equals_the_direct_edit_of_the_activations(family_setups, family):
    adapter, tokens, panel = family_setups[family]
    inputs = prepare(tokens, panel, readout_layer=1, n_cells=10, seed=0)
    sae = random_sae(adapter.d_model)
    hidden = adapter.forward(inputs.tokens, output_hidden_states=True).hidden_states[LAYER + 1]
    fired = (sae.encode(hidden[inputs.tokens.gene_index >= 0].float()) > 0).sum(0)
    features = tuple(int(f) for f in torch.argsort(fired, descending=True)[[0, 2, 5]])   # some of the most active
    edits = [FeatureEdit(LAYER, features, 0.0), FeatureEdit(LAYER, features, 3.0), FeatureEdit(LAYER, features, 1.0)]
    got = run_feature_edits(adapter, inputs, {LAYER: sae}, edits, batch_size=4)

    sub = inputs.tokens
    masked = adapter.masked(sub, inputs.chosen)
    base = adapter.forward(sub, decode=False)
    base_loss, _ = adapter.masked_prediction(adapter.forward(masked, decode=False), sub, inputs.chosen)
    np.testing.assert_allclose(got["baseline"].loss, base_loss, rtol=1e-5)
    genes = sub.gene_index >= 0
    real = adapter.as_tensor(sub.attention_mask).bool()
    for edit in edits[:2]:
        r = got[edit.key]
        loss, _ = adapter.masked_prediction(direct(adapter, masked, sae, features, edit.scale), sub, inputs.chosen)
        np.testing.assert_allclose(r.loss, loss, rtol=1e-4, atol=1e-6)
        out = direct(adapter, sub, sae, features, edit.scale)
        np.testing.assert_allclose(r.output_cos, adapter.output_distance(out, base, real), rtol=1e-3, atol=1e-6)
        change = adapter.prediction_change(out, base).double().numpy()[genes]
        want = pd.Series(change).groupby(sub.gene_index[genes]).mean()
        seen = np.flatnonzero(r.change_count)
        np.testing.assert_array_equal(seen, want.index.to_numpy())
        np.testing.assert_allclose(r.change_sum[seen] / r.change_count[seen], want.to_numpy(), rtol=1e-3, atol=1e-6)
        assert r.fired_count + r.quiet_count == int(genes.sum()) and r.fired_count > 0
        assert r.change_sum.sum() > 0
    assert r.loss.tolist() != got[edits[0].key].loss.tolist()
    same = got[edits[2].key]                                  # scale 1: the error term keeps x exactly
    np.testing.assert_array_equal(same.loss, got["baseline"].loss)
    assert same.change_sum.max() < 1e-6 and same.output_cos.max() < 1e-6


def test_causal_specificity_statistics_equal_pandas_and_scipy(rng):
    class Readout:   # the shape of analysis.interp.feature_intervention.FeatureReadout
        pass

    n_genes, n_cells = 30, 12
    symbols = np.array([f"G{i}" for i in range(n_genes)])
    base, edited = Readout(), Readout()
    for r in (base, edited):
        r.loss, r.accuracy, r.output_cos = rng.random(n_cells), rng.random(n_cells), rng.random(n_cells)
    edited.change_count = rng.integers(0, 4, n_genes)
    edited.change_sum = rng.random(n_genes) * edited.change_count
    edited.change_sum[:6] += 3 * edited.change_count[:6]               # own genes move more
    edited.fired_sum, edited.fired_count, edited.quiet_sum, edited.quiet_count = 9.0, 3, 4.0, 8
    own = np.zeros(n_genes, bool)
    own[:8] = True
    edit = FeatureEdit(1, (4, 2), 0)
    results, genes = summarise_feature_edits({"baseline": base, edit.key: edited}, [edit], {edit.key: own}, symbols,
                                             n_layers=4)
    seen = edited.change_count > 0
    per_gene = edited.change_sum[seen] / edited.change_count[seen]
    row = results.set_index("readout").loc["specificity_genes"]
    assert row["value"] == pytest.approx(per_gene[own[seen]].mean())
    assert row["baseline"] == pytest.approx(per_gene[~own[seen]].mean())
    assert row["p"] == pytest.approx(mannwhitneyu(per_gene[own[seen]], per_gene[~own[seen]],
                                                  alternative="greater").pvalue)
    assert row["p"] < 0.01 and row["n"] == int(own[seen].sum())
    positions = results.set_index("readout").loc["specificity_positions"]
    assert positions["value"] == pytest.approx(3.0) and positions["baseline"] == pytest.approx(0.5)
    loss = results.set_index("readout").loc["mlm_loss"]
    assert loss["delta"] == pytest.approx((edited.loss - base.loss).mean())
    assert edit.key == "sae@L1[2,4]x0" and set(results["features"]) == {"2,4"}
    assert genes["mean_change"].tolist() == pytest.approx(per_gene.tolist())
    assert genes["symbol"].tolist() == symbols[seen].tolist()
    registered = pd.DataFrame(feature_edit_tests(results).rows)
    assert set(registered["analysis"]) == {"live_feature_edit"} and registered["exploratory"].all()
    assert len(registered) == 2 and not registered["confirmatory"].any()
    last, _ = summarise_feature_edits({"baseline": base, edit.key: edited}, [edit], {edit.key: own}, symbols,
                                      n_layers=2)                   # L1 is the last layer: specificity is structural
    structural = last.set_index("readout")["structural"]
    assert structural["specificity_genes"] and structural["specificity_positions"] and not structural["mlm_loss"]
    assert np.isnan(last.set_index("readout").loc["specificity_genes", "p"])
    assert len(feature_edit_tests(last).rows) == 1


def test_a_feature_edit_is_checked():
    with pytest.raises(ValueError, match="at least one feature"):
        FeatureEdit(0, (), 0)
    with pytest.raises(ValueError, match="finite"):
        FeatureEdit(0, (1,), float("nan"))


def test_an_edit_whose_read_out_overflows_enters_no_test():
    """A scale large enough to overflow gives non-finite read-outs in some cells: the row stays (it says what
    happened) but with no p, so it is out of BH and out of the statistics registry; a finite edit is tested."""
    from analysis.scoring.ablation import paired_row
    from scipy.stats import wilcoxon

    base = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    blown = paired_row(np.array([1.5, np.inf, 3.2, 4.1, np.nan, 6.3]), base)
    assert np.isnan(blown["p"]) and np.isnan(blown["ci_low"]) and blown["n"] == 6
    shift = np.array([0.5, 0.125, 0.25, -0.0625, 0.375, 0.75])            # distinct, exact in binary: scipy's exact
    fine = paired_row(base + shift, base)
    assert fine["p"] == pytest.approx(wilcoxon(shift, method="exact").pvalue)
    results = pd.DataFrame([{"intervention": k, "layer": 0, "features": "3", "scale": s, "readout": "mlm_loss",
                             **row} for k, s, row in (("blown", 1e30, blown), ("fine", 2.0, fine))])
    hypotheses = [r["hypothesis"] for r in feature_edit_tests(results).rows]
    assert len(hypotheses) == 1 and "x2 changes mlm_loss" in hypotheses[0]
