"""The TopK SAE (analysis.interp.sae) against a hand computation on a tiny case; training from activations on disk
lowers the loss, is the same for the same seed, and recovers a planted sparse dictionary; an intervention keeps the
error term (no edit returns the activations exactly) and equals the direct edit of the activations; the
residual-stream capture (analysis.interp.residual) equals the model's own hidden states, for both families."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.interp.residual import capture_residual_stream
from analysis.interp.sae import TopKSAE, evaluate_sae, reconstruction_loss, train_sae
from analysis.io.activations import write_index


def tiny_sae() -> TopKSAE:
    """d = 3, F = 4, k = 2 with hand-set weights."""
    sae = TopKSAE(3, 4, 2)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, -1.0, 0.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -0.5, 0.1, 0.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.6], [0.0, 1.0, 0.0, -0.8], [0.0, 0.0, 1.0, 0.0]]))
        sae.b_dec.copy_(torch.tensor([0.5, 0.0, -0.5]))
    return sae


def test_topk_sae_equals_a_hand_computation():
    sae = tiny_sae()
    x = torch.tensor([[2.5, 1.0, -0.5], [0.5, 3.0, 0.5]])
    # pre = W_enc (x - b_dec) + b_enc; x - b_dec = [2, 1, 0] and [0, 3, 1]
    # row 0: [2, 1 - 0.5, 0 + 0.1, 2 - 1] = [2, 0.5, 0.1, 1] -> top 2: latents 0 (2) and 3 (1)
    # row 1: [0, 3 - 0.5, 1 + 0.1, 0 - 3] = [0, 2.5, 1.1, -3] -> top 2: latents 1 (2.5) and 2 (1.1)
    assert torch.allclose(sae.pre_activations(x), torch.tensor([[2.0, 0.5, 0.1, 1.0], [0.0, 2.5, 1.1, -3.0]]))
    z = sae.encode(x)
    assert torch.allclose(z, torch.tensor([[2.0, 0.0, 0.0, 1.0], [0.0, 2.5, 1.1, 0.0]]))
    # x_hat = W_dec z + b_dec: row 0 = 2*[1,0,0] + 1*[0.6,-0.8,0] + [0.5,0,-0.5] = [3.1, -0.8, -0.5]
    #                          row 1 = 2.5*[0,1,0] + 1.1*[0,0,1] + [0.5,0,-0.5] = [0.5, 2.5, 0.6]
    x_hat, latents = sae(x)
    assert torch.equal(latents, z)
    want = torch.tensor([[3.1, -0.8, -0.5], [0.5, 2.5, 0.6]])
    assert torch.allclose(x_hat, want)
    # loss: squared errors row 0 [0.36, 3.24, 0], row 1 [0, 0.25, 0.01]; mean over 6 = 3.86 / 6
    assert reconstruction_loss(x, x_hat).item() == pytest.approx(3.86 / 6)


def test_top_k_keeps_k_latents_and_relu_drops_negative_ones():
    sae = tiny_sae()
    z = sae.encode(torch.tensor([[0.5, -1.0, 0.5]]))   # pre = [0, -1.5, 1.1, 1]: top 2 = latents 2 and 3
    assert torch.allclose(z, torch.tensor([[0.0, 0.0, 1.1, 1.0]]))
    z = sae.encode(torch.tensor([[-1.5, -1.0, 0.5]]))  # pre = [-2, -1.5, 1.1, -2]: top 2 = 2 and 1; ReLU(-1.5) = 0
    assert torch.allclose(z, torch.tensor([[0.0, 0.0, 1.1, 0.0]]))
    with pytest.raises(ValueError, match="k must be"):
        TopKSAE(3, 4, 5)


def test_an_intervention_keeps_the_error_term_and_equals_a_direct_edit():
    sae = tiny_sae()
    x = torch.tensor([[2.5, 1.0, -0.5], [0.5, 3.0, 0.5]])
    assert torch.equal(sae.intervene(x, lambda z: z), x)           # nothing edited: x exactly, not x_hat

    def zero_feature_3(z):
        return z.index_fill(1, torch.tensor([3]), 0.0)
    # by hand: row 0 fires feature 3 at 1.0, so x loses 1.0 * W_dec[:, 3]; row 1 does not fire it
    want = x.clone()
    want[0] -= 1.0 * torch.tensor([0.6, -0.8, 0.0])
    assert torch.allclose(sae.intervene(x, zero_feature_3), want)
    doubled = sae.intervene(x, lambda z: z * 2)                   # scaling every feature by 2 adds W_dec z once more
    assert torch.allclose(doubled, x + sae.encode(x) @ sae.W_dec.T)


@pytest.fixture
def planted(tmp_path):
    """Activations x = codes @ D + noise on disk (an ActivationStore): 600 rows, d = 16, a 24-atom unit-norm
    dictionary D, 3 atoms active per row."""
    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(24, 16))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((600, 24))
    for row in codes:
        row[rng.choice(24, 3, replace=False)] = rng.uniform(1, 3, 3)
    x = (codes @ atoms + 0.01 * rng.normal(size=(600, 16))).astype(np.float32)
    np.save(tmp_path / "residual_L0.npy", x)
    return write_index(tmp_path, [0], np.arange(600, dtype=np.int32), np.zeros(600, dtype=np.int32), 16), atoms


def test_training_from_disk_lowers_the_loss_and_recovers_a_planted_dictionary(planted):
    store, atoms = planted
    sae, report = train_sae(lambda: store.batches(0, 50, seed=1), 16, n_features=32, k=3, epochs=60, lr=5e-3,
                            seed=0)
    first, last = report.losses[:12].mean(), report.losses[-12:].mean()
    assert last < 0.25 * first
    assert report.fraction_variance_explained > 0.9
    # each planted atom has a decoder direction nearly parallel to it
    cosine = np.abs(atoms @ sae.W_dec.detach().numpy())          # [24, 32]
    assert np.median(cosine.max(axis=1)) > 0.9
    assert np.allclose(np.linalg.norm(sae.W_dec.detach().numpy(), axis=0), 1, atol=1e-5)
    again = evaluate_sae(sae, store.batches(0, 600))                # in row order: the pass's other products
    x = np.array(store.layer(0), dtype=np.float64)
    assert np.allclose(again.covariance, np.cov(x.T, bias=True), atol=1e-6)
    with torch.no_grad():
        indices, values = sae.active(torch.from_numpy(x.astype(np.float32)))
    assert np.array_equal(again.indices, indices.numpy()) and np.allclose(again.values, values.numpy())
    assert again.fraction_variance_explained == pytest.approx(report.fraction_variance_explained, rel=1e-6)
    assert report.firing_rate.shape == (32,) and 2.5 < report.firing_rate.sum() <= 3 + 1e-9   # at most k per row


def test_training_is_the_same_for_the_same_seed(planted):
    store, _ = planted
    runs = [train_sae(lambda: store.batches(0, 100, seed=2), 16, n_features=32, k=3, epochs=2, seed=5)[0]
            for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values()))
    other = train_sae(lambda: store.batches(0, 100, seed=2), 16, n_features=32, k=3, epochs=2, seed=6)[0]
    assert not torch.equal(runs[0].W_dec, other.W_dec)


@pytest.mark.parametrize("family", ["geneformer", "scgpt"])
def test_capture_equals_the_models_own_hidden_states(family_setups, family, tmp_path):
    adapter, tokens, _panel = family_setups[family]
    cells = tokens.subset(np.arange(12))
    store = capture_residual_stream(adapter, cells, (0, 1), tmp_path / "act", batch_size=5)
    assert store.n_rows == int((cells.gene_index >= 0).sum()) and store.d_model == adapter.d_model
    out = adapter.forward(cells, output_hidden_states=True)
    cell, gene = store.row_cell, store.row_gene
    for layer in (0, 1):
        hidden = out.hidden_states[layer + 1].numpy()                # after layer `layer`
        got = store.layer(layer)
        for r in range(store.n_rows):
            position = int(np.nonzero(cells.gene_index[cell[r]] == gene[r])[0][0])
            np.testing.assert_allclose(got[r], hidden[cell[r], position], rtol=1e-4, atol=1e-5)
    c, p = np.nonzero(cells.gene_index >= 0)                       # every gene position once
    assert sorted(zip(cell.tolist(), gene.tolist())) == sorted(zip(c.tolist(), cells.gene_index[c, p].tolist()))


@pytest.mark.parametrize("family", ["geneformer", "scgpt"])
@pytest.mark.parametrize("chunk", [7, 4096], ids=["positions in chunks of 7", "one chunk"])
def test_feature_activity_equals_the_captured_latents_per_cell(family_setups, family, tmp_path, chunk, monkeypatch):
    from analysis.interp import residual
    from analysis.interp.residual import feature_activity
    from analysis.scoring.sae_features import cell_feature_activity

    monkeypatch.setattr(residual, "ENCODE_ROWS", chunk)
    adapter, tokens, _panel = family_setups[family]
    cells = tokens.subset(np.arange(9))
    store = capture_residual_stream(adapter, cells, (1,), tmp_path / "act", batch_size=4)
    sae = TopKSAE(adapter.d_model, 64, 4, seed=2)
    indices, values = sae.active(torch.from_numpy(np.array(store.layer(1))))
    want = cell_feature_activity(indices.numpy(), values.detach().numpy(), store.row_cell, cells.n_cells, 64)
    got = feature_activity(adapter, cells, {1: sae}, batch_size=5)[1]
    assert got.shape == (9, 64) and want.any()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_sae_settings_are_checked_before_anything_runs():
    from analysis.config import load_config
    from analysis.errors import ConfigError
    from analysis.stages.inputs import check_sae

    cfg = load_config(cli={"sae.layers": (0, 3), "sae.k": 16})
    check_sae(cfg.sae, 4, 32)
    with pytest.raises(ConfigError, match=r"sae.layers \[3\]: the model has layers 0-2"):
        check_sae(cfg.sae, 3, 32)
    with pytest.raises(ConfigError, match="sae.k = 16 exceeds the 8 features"):
        check_sae(load_config(cli={"sae.k": 16, "sae.expansion": 1}).sae, 4, 8)
    with pytest.raises(ConfigError, match=r"sae.regulatory_cells \(2\) must be at least 3"):
        check_sae(load_config(cli={"sae.regulatory_cells": 2}).sae, 4, 32)
    with pytest.raises(ConfigError, match=r"sae.n_responding \(0\)"):
        check_sae(load_config(cli={"sae.n_responding": 0}).sae, 4, 32)
    with pytest.raises(ConfigError, match="sae.run = 'maybe'"):
        load_config(cli={"sae.run": "maybe"})
    assert load_config().sae.active(embedded_model=True) and not load_config().sae.active(embedded_model=False)
    assert load_config(cli={"sae.run": "on"}).sae.active(embedded_model=False)


def test_capture_cells_bound_the_activations_on_disk():
    from analysis.stages.sae import capture_cells

    assert np.array_equal(capture_cells(100, 50, 2, 64, 1.0, seed=0), np.arange(100))
    kept = capture_cells(100_000, 2_000, 4, 1_152, 2.0, seed=0)    # V2-316M-sized rows: 2 GiB holds ~58 cells
    assert kept.size == int(2 * 2 ** 30 // (2_000 * 4 * 1_152 * 4)) and np.all(np.diff(kept) > 0)
    assert np.array_equal(kept, capture_cells(100_000, 2_000, 4, 1_152, 2.0, seed=0))


def test_svd_alignment_equals_numpys_svd(rng):
    from analysis.stages.sae import svd_alignment

    x = rng.normal(size=(500, 6)) * np.array([5, 3, 1, 0.5, 0.2, 0.1])
    cov = np.cov(x.T, bias=True)
    decoder = rng.normal(size=(6, 9))
    decoder[:, 0] = [1, 0, 0, 0, 0, 0]                              # the first principal axis: visible
    decoder /= np.linalg.norm(decoder, axis=0)
    r, max_cos = svd_alignment(decoder, cov, 0.9)
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    share = np.cumsum(s ** 2) / (s ** 2).sum()
    assert r == int(np.argmax(share >= 0.9)) + 1
    assert np.allclose(max_cos, np.abs(vt[:r] @ decoder).max(axis=0))
    assert max_cos[0] > 0.99
