"""Each intervention against an independent computation by weight surgery on a copy of a tiny random model,
under eager and SDPA attention, with padded batches; hooks must fire and leave nothing behind."""
import copy

import numpy as np
import pytest
import torch

from analysis.interp.hooks import head_output_means, hooked
from analysis.interp.interventions import InterventionSpec, intervention_key
from analysis.models.geneformer.adapter import GeneformerAdapter
from tests.conftest import hook_ids, tiny_bert

N_HEADS, D_HEAD, LAYER = 4, 8, 1


def batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, 60, (3, 12))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    return ids, mask


def sharpen(model, factor=30.0):
    """Random init attends almost uniformly (scores ~ 0); scale Q/K so that uniform attention is a real change."""
    with torch.no_grad():
        for lay in model.bert.encoder.layer:
            lay.attention.self.query.weight.mul_(factor)
            lay.attention.self.key.weight.mul_(factor)
    return model


def adapter_for(model):
    return GeneformerAdapter(model, device=torch.device("cpu"), name="tiny", checkpoint_sha256=None)


def run(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), output_hidden_states=True)
    return out.logits, out.hidden_states


def layer(model, i=LAYER):
    return model.bert.encoder.layer[i]


def surgery(model, spec, means=None):
    """Independent reference: edit weights so the plain model computes the intervention."""
    m = copy.deepcopy(model)
    lay = layer(m, spec.layer)
    with torch.no_grad():
        for h in spec.heads:
            sl = slice(h * D_HEAD, (h + 1) * D_HEAD)
            dense = lay.attention.output.dense
            if spec.kind == "zero_head":
                dense.weight[:, sl] = 0
            elif spec.kind == "mean_head":
                dense.bias += dense.weight[:, sl] @ means[spec.layer][h]
                dense.weight[:, sl] = 0
            elif spec.kind == "uniform_head":  # equal scores -> softmax is uniform over the unmasked keys
                for proj in (lay.attention.self.query, lay.attention.self.key):
                    proj.weight[sl] = 0
                    proj.bias[sl] = 0
        if spec.kind == "zero_mlp":
            lay.output.dense.weight.zero_()
            lay.output.dense.bias.zero_()
    return m


SPECS = [InterventionSpec("zero_head", LAYER, (0, 2)), InterventionSpec("mean_head", LAYER, (1,)),
         InterventionSpec("uniform_head", LAYER, (3, 1)), InterventionSpec("zero_mlp", LAYER)]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_intervention_matches_weight_surgery(attn, spec):
    model = sharpen(tiny_bert(64, attn=attn, seed=4, layers=3, heads=N_HEADS, hidden=N_HEADS * D_HEAD))
    adapter = adapter_for(model)
    ids, mask = batch()
    means = head_output_means(adapter, ids, mask)
    base_logits, _ = run(model, ids, mask)
    before = hook_ids(model)
    with hooked(adapter, [spec], head_means=means) as report:
        logits, hidden = run(model, ids, mask)
    ref_logits, ref_hidden = run(surgery(model, spec, means), ids, mask)
    real = torch.as_tensor(mask).bool()
    assert report.fired[spec.key] == 1
    assert torch.allclose(logits[real], ref_logits[real], atol=1e-4)
    for a, b in zip(hidden, ref_hidden):
        assert torch.allclose(a[real], b[real], atol=1e-4)
    assert not torch.allclose(logits[real], base_logits[real], atol=1e-3)  # it really changed something
    assert hook_ids(model) == before


def test_head_means_by_hand():
    model = tiny_bert(64, seed=1, layers=2, heads=N_HEADS, hidden=N_HEADS * D_HEAD)
    adapter = adapter_for(model)
    ids, mask = batch(3)
    captured = []
    h = layer(model, 0).attention.output.dense.register_forward_pre_hook(lambda _m, a: captured.append(a[0]))
    run(model, ids, mask)
    h.remove()
    x = captured[0][torch.as_tensor(mask).bool()].view(-1, N_HEADS, D_HEAD).mean(0)
    assert torch.allclose(head_output_means(adapter, ids, mask, batch_size=2)[0], x, atol=1e-5)


def test_composition_and_cleanup_after_error():
    model = tiny_bert(64, seed=2, layers=2, heads=N_HEADS, hidden=N_HEADS * D_HEAD)
    adapter = adapter_for(model)
    specs = [InterventionSpec("zero_head", 0, (1,)), InterventionSpec("zero_mlp", 1)]
    assert intervention_key(specs) == intervention_key(specs[::-1]) == "zero_head@L0[1]+zero_mlp@L1"
    ids, mask = batch()
    run(model, ids, mask)
    before = hook_ids(model)
    with pytest.raises(RuntimeError, match="boom"):
        with hooked(adapter, specs) as report:
            run(model, ids, mask)
            raise RuntimeError("boom")
    assert report.fired == {"zero_head@L0[1]": 1, "zero_mlp@L1": 1}
    assert hook_ids(model) == before
    with pytest.raises(ValueError, match="outside the model"):
        with hooked(adapter, [InterventionSpec("zero_head", 5, (0,))]):
            pass
    with pytest.raises(ValueError, match="needs dataset-mean"):
        with hooked(adapter, [InterventionSpec("mean_head", 0, (0,))]):
            pass
    assert hook_ids(model) == before
