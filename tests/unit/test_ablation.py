"""Ablation read-outs against hand computations on a tiny random model."""
import copy

import numpy as np
import pytest
import torch

from analysis.interp.ablation import SweepItem, ablate, fixed_masking, prepare, sweep, zero_heads
from analysis.interp.attention import extract_attention
from analysis.interp.interventions import InterventionSpec
from analysis.models.geneformer.adapter import GeneformerAdapter
from analysis.scoring.panel import select_panel
from analysis.scoring.ranking import evaluable_universe
from analysis.io.references import ReferenceNetwork
from analysis.models.geneformer.tokenizer import tokenize
from tests.conftest import tiny_bert
from tests.unit.test_hooks import sharpen


@pytest.fixture(scope="module")
def setting(small_screen):
    cells, net, dicts = small_screen
    tokens = tokenize(cells, dicts, max_len=80)
    panel = select_panel(cells, tokens, reference_tfs=set(net.symbols[: net.n_tfs]), n_hvg=40, panel_size=60)
    e = net.edges()
    ref = ReferenceNetwork("truth", e.assign(reference="truth", confidence="NA"), {})
    uni = evaluable_universe(panel, ref, np.ones((len(panel),) * 2, bool))
    model = sharpen(tiny_bert(len(dicts.token), seed=7, layers=3, heads=4, hidden=32))
    adapter = GeneformerAdapter(model, device=torch.device("cpu"), name="tiny", checkpoint_sha256=None)
    inputs = prepare(adapter, tokens, panel, uni, mask_id=dicts.mask_id, readout_layer=2, n_cells=20, seed=1)
    return adapter, inputs, tokens, panel, model


def test_fixed_masking_is_seeded_and_masks_every_cell(setting):
    _, inputs, *_ = setting
    again = fixed_masking(inputs.tokens, 1, seed=1)
    assert np.array_equal(again[1], inputs.labels) and ((inputs.labels != -100).sum(1) >= 1).all()
    assert (inputs.masked_ids[inputs.labels != -100] == 1).all()


def test_mlm_loss_and_fidelity_by_hand(setting):
    adapter, inputs, _, _, model = setting
    spec = InterventionSpec("zero_mlp", 1)
    item = SweepItem("mlp_layer", 1, 1, (spec,))
    results, fidelity = ablate(adapter, inputs, [item], batch_size=6)
    surgery = copy.deepcopy(model)
    with torch.no_grad():
        surgery.bert.encoder.layer[1].output.dense.weight.zero_()
        surgery.bert.encoder.layer[1].output.dense.bias.zero_()
    losses, base_losses = [], []
    for c in range(inputs.tokens.n_cells):
        n = int(inputs.tokens.lengths[c])
        ids = torch.as_tensor(inputs.masked_ids[c:c + 1, :n])
        lab = torch.as_tensor(inputs.labels[c:c + 1, :n])
        for m, out in ((surgery, losses), (model, base_losses)):
            with torch.no_grad():
                logits = m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            out.append(torch.nn.functional.cross_entropy(logits[0][lab[0] != -100], lab[0][lab[0] != -100]).item())
    row = results[results["readout"] == "mlm_loss"].iloc[0]
    assert row["value"] == pytest.approx(np.mean(losses), rel=1e-4)
    assert row["baseline"] == pytest.approx(np.mean(base_losses), rel=1e-4)
    f = fidelity.set_index("layer")["hidden_cos_mean"]
    assert f[0] == pytest.approx(0, abs=1e-6) and f[1] == pytest.approx(0, abs=1e-6) and f[2] > 1e-6 and f[3] > 1e-6


def test_baseline_readout_attention_equals_store(setting):
    adapter, inputs, _, panel, _ = setting
    from analysis.interp.ablation import run_interventions

    acc = run_interventions(adapter, inputs, {}, batch_size=7)
    store = extract_attention(adapter, inputs.tokens, panel, batch_size=5, progress=False)
    g = len(panel)
    assert np.allclose(acc["baseline"].sums.reshape(4, g, g), store.sums[2], atol=1e-8)
    assert np.array_equal(acc["baseline"].counts.reshape(g, g), store.counts)


def test_sweep_families_and_matching():
    order = [(l, h) for l in range(3) for h in range(4)][::-1]
    items = sweep(order, 3, readout_layer=2, ks=(1, 5, 20), n_random=3, seed=0)
    fam = {(i.family, i.k, i.draw) for i in items}
    assert ("top_k", 12, -1) in fam and ("random_k", 5, 2) in fam and ("mlp_late_block", 2, -1) in fam
    top5 = next(i for i in items if i.family == "top_k" and i.k == 5)
    assert sum(len(s.heads) for s in top5.specs) == 5 and top5.specs == zero_heads(order[:5])
    assert all(sum(len(s.heads) for s in i.specs) == i.k for i in items if i.family.endswith("random_k"))
