"""The live ablation's shortcuts leave its numbers unchanged: read-outs computed without the vocabulary-sized decoder
(output distance from the decoder inputs, logits decoded only at the masked and TF positions) against the same
read-outs from full logits computed directly with torch; and an unablated pass kept on disk and reused gives the
same accumulators as running it again, while a pass that fails leaves nothing a later request would read."""
import numpy as np
import pytest
import torch

from analysis.interp.ablation import prepare, run_interventions
from analysis.interp.ablation_baseline import BaselineStore
from analysis.interp.interventions import InterventionSpec
from analysis.interp.positive_control import target_recall_loss, target_sets

FAMILIES = ("geneformer", "scgpt")


@pytest.fixture(scope="module")
def setups(family_setups):
    return {family: (adapter, prepare(tokens, panel, readout_layer=1, n_cells=12, seed=2))
            for family, (adapter, tokens, panel) in family_setups.items()}


def test_geneformer_readouts_without_the_decoder_equal_full_logits(setups, small_screen):
    adapter, inputs = setups["geneformer"]
    sub = inputs.tokens.subset(np.arange(6))
    chosen = inputs.chosen[:6, :sub.input_ids.shape[1]]
    keep = adapter.as_tensor(sub.attention_mask).bool()
    with torch.no_grad():
        full = adapter.model(input_ids=adapter.as_tensor(sub.input_ids), attention_mask=keep.long()).logits
        # another output to compare against: the same cells with layer 0's attention output zeroed by weight surgery
        dense = adapter.model.bert.encoder.layer[0].attention.output.dense
        saved = dense.weight.clone()
        dense.weight[:] = 0
        other = adapter.model(input_ids=adapter.as_tensor(sub.input_ids), attention_mask=keep.long()).logits
        dense.weight.copy_(saved)
    fast = adapter.forward(sub, decode=False)
    assert fast.token_logits is None and fast.features is not None

    # output distance: cosine distance of full logits per token, mean over real tokens
    with torch.no_grad():
        dense.weight[:] = 0
        fast_other = adapter.forward(sub, decode=False)
        dense.weight.copy_(saved)
    cos = torch.nn.functional.cosine_similarity(other.double(), full.double(), dim=-1)
    expected = (((1 - cos) * keep).sum(1) / keep.sum(1)).numpy()
    assert expected.min() > 5e-5                      # the comparison is not between equal outputs
    assert np.allclose(adapter.output_distance(fast_other, fast, keep), expected, rtol=1e-5, atol=1e-7)

    # behaviour: cross-entropy and accuracy at the masked positions of the masked input
    masked = adapter.masked(sub, chosen)
    with torch.no_grad():
        logits = adapter.model(input_ids=adapter.as_tensor(masked.input_ids), attention_mask=keep.long()).logits
    loss, acc = adapter.masked_prediction(adapter.forward(masked, decode=False), sub, chosen)
    for c in range(6):
        pos = np.nonzero(chosen[c])[0]
        ce = torch.nn.functional.cross_entropy(logits[c, pos], torch.as_tensor(sub.input_ids[c, pos]))
        hit = (logits[c, pos].argmax(-1).numpy() == sub.input_ids[c, pos]).mean()
        assert loss[c] == pytest.approx(float(ce), rel=1e-5) and acc[c] == pytest.approx(hit)

    # target recall: -mean log softmax over each TF's present targets, from the logits at the TF positions
    _, net, _ = small_screen
    sets = target_sets(sub, {tuple(e) for e in net.edges()[["tf", "target"]].to_numpy()}, adapter.vocab_size)
    recall = target_recall_loss(adapter, fast, sets, np.arange(6))
    logp = torch.log_softmax(full.double(), -1)
    for c in np.unique(sets.cell):
        rows = np.nonzero(sets.cell == c)[0]
        by_hand = np.mean([-(logp[c, sets.position[r]].numpy() * sets.targets[r]).sum() / sets.targets[r].sum()
                           for r in rows])
        assert recall[c] == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_kept_baseline_gives_the_same_readouts(setups, family, tmp_path):
    adapter, inputs = setups[family]
    items = {"zero": (InterventionSpec("zero_head", 1, (0, 2)),), "mlp": (InterventionSpec("zero_mlp", 0),)}
    plain = run_interventions(adapter, inputs, items, batch_size=5)
    store = BaselineStore(tmp_path / "baseline")
    filled = run_interventions(adapter, inputs, {"zero": items["zero"]}, batch_size=5, baseline=store)
    assert store.complete and sorted(p.name for p in tmp_path.iterdir()) == ["baseline"]
    reused = run_interventions(adapter, inputs, {"mlp": items["mlp"]}, batch_size=5,
                               baseline=BaselineStore(tmp_path / "baseline"))
    for got, key in ((filled, "zero"), (reused, "mlp"), (filled, "baseline"), (reused, "baseline")):
        for name in ("loss", "accuracy", "hidden_cos", "output_cos", "sums", "counts"):
            assert np.allclose(getattr(got[key], name), getattr(plain[key], name), rtol=1e-6, atol=1e-9), (key, name)
        assert np.array_equal(np.isnan(got[key].target_recall), np.isnan(plain[key].target_recall))
    assert reused["mlp"].hidden_cos[:, 2].min() > 1e-6   # the MLP ablation moved layer 1's output


def test_a_failed_pass_leaves_no_baseline(setups, tmp_path):
    adapter, inputs = setups["geneformer"]
    calls = []

    def stop(fraction):
        calls.append(fraction)
        raise KeyboardInterrupt

    store = BaselineStore(tmp_path / "baseline")
    with pytest.raises(KeyboardInterrupt):
        run_interventions(adapter, inputs, {}, batch_size=5, baseline=store, progress=stop)
    assert calls and not store.complete and list(tmp_path.iterdir()) == []
