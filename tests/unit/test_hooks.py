"""Each intervention, on both model families, against an independent computation by weight surgery on a copy of a
tiny random model (Geneformer under eager and SDPA attention, scGPT under SDPA and its explicit path), with padded
batches; hooks must fire, change the output, and leave nothing behind."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.interp.hooks import head_output_means, hooked
from analysis.interp.interventions import InterventionSpec, intervention_key
from analysis.models.base import TokenizedCells
from tests.conftest import geneformer_adapter, hook_ids, scgpt_adapter, sharpen, tiny_bert, tiny_scgpt_parts

N_HEADS, D_HEAD, LAYER = 4, 8, 1


def batch(seed=0, n_genes=60, values=False):
    """Three cells of 12 positions, two of them padded; scGPT inputs start with <cls> (id n_genes + 1)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, n_genes, (3, 12))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    gene_index = np.where(mask == 1, ids, -1)
    vals = None
    if values:
        ids[:, 0], gene_index[:, 0] = n_genes + 1, -1
        ids[mask == 0] = n_genes
        vals = np.where(mask == 1, rng.integers(0, 51, ids.shape), -2).astype(np.float32)
        vals[:, 0] = -2
    else:
        ids[mask == 0] = 0
    return TokenizedCells(ids, mask, gene_index, pd.DataFrame(), pd.DataFrame(index=range(3)), {}, vals)


def geneformer(attn):
    model = sharpen(tiny_bert(64, attn=attn, seed=4, layers=3, heads=N_HEADS, hidden=N_HEADS * D_HEAD))
    return geneformer_adapter(model), batch()


def scgpt(attn):
    model, args, vocab = tiny_scgpt_parts([f"G{i}" for i in range(60)], seed=4, layers=3, heads=N_HEADS,
                                          hidden=N_HEADS * D_HEAD)
    model.set_attn_implementation(attn)
    return sharpen(scgpt_adapter(model, args, vocab)), batch(values=True)


FAMILIES = {"geneformer-eager": lambda: geneformer("eager"), "geneformer-sdpa": lambda: geneformer("sdpa"),
            "scgpt-sdpa": lambda: scgpt("sdpa"), "scgpt-eager": lambda: scgpt("eager")}


def run(adapter, cells):
    out = adapter.forward(cells, output_hidden_states=True)
    return out.prediction, out.hidden_states


def surgery(adapter, spec, means=None):
    """Independent reference: edit weights so the plain model computes the intervention. Heads are located through
    the family's own module names (BERT's separate query/key, scGPT's packed Wqkv rows), not through the adapter's
    site map."""
    a = copy.deepcopy(adapter)
    d = a.d_model
    if a.family == "geneformer":
        lay = a.model.bert.encoder.layer[spec.layer]
        dense, mlp = lay.attention.output.dense, lay.output.dense
        qk = [(lay.attention.self.query, 0), (lay.attention.self.key, 0)]
    else:
        lay = a.model.transformer_encoder.layers[spec.layer]
        dense, mlp = lay.self_attn.out_proj, lay.linear2
        qk = [(lay.self_attn.Wqkv, 0), (lay.self_attn.Wqkv, d)]
    with torch.no_grad():
        for h in spec.heads:
            sl = slice(h * D_HEAD, (h + 1) * D_HEAD)
            if spec.kind == "zero_head":
                dense.weight[:, sl] = 0
            elif spec.kind == "mean_head":
                dense.bias += dense.weight[:, sl] @ means[spec.layer][h]
                dense.weight[:, sl] = 0
            elif spec.kind == "uniform_head":  # equal scores -> softmax is uniform over the unmasked keys
                for proj, offset in qk:
                    rows = slice(offset + h * D_HEAD, offset + (h + 1) * D_HEAD)
                    proj.weight[rows] = 0
                    proj.bias[rows] = 0
        if spec.kind == "zero_mlp":
            mlp.weight.zero_()
            mlp.bias.zero_()
    return a


SPECS = [InterventionSpec("zero_head", LAYER, (0, 2)), InterventionSpec("mean_head", LAYER, (1,)),
         InterventionSpec("uniform_head", LAYER, (3, 1)), InterventionSpec("zero_mlp", LAYER)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_intervention_matches_weight_surgery(family, spec):
    adapter, cells = FAMILIES[family]()
    means = head_output_means(adapter, cells)
    base, _ = run(adapter, cells)
    before = hook_ids(adapter.model)
    with hooked(adapter, [spec], head_means=means) as report:
        out, hidden = run(adapter, cells)
    ref_out, ref_hidden = run(surgery(adapter, spec, means), cells)
    real = torch.as_tensor(cells.attention_mask).bool()
    assert report.fired[spec.key] == 1
    assert torch.allclose(out[real], ref_out[real], atol=1e-4)
    for a, b in zip(hidden, ref_hidden):
        assert torch.allclose(a[real], b[real], atol=1e-4)
    assert not torch.allclose(out[real], base[real], atol=1e-3)  # it really changed something
    assert hook_ids(adapter.model) == before


@pytest.mark.parametrize("family", ["geneformer-sdpa", "scgpt-sdpa"])
def test_zeroing_every_head_is_the_output_bias(family):
    """Zeroing all heads of a layer = replacing the attention block's output by its output projection's bias."""
    adapter, cells = FAMILIES[family]()
    spec = InterventionSpec("zero_head", LAYER, tuple(range(N_HEADS)))
    dense = adapter.module(adapter.sites.head_output(LAYER))
    handle = dense.register_forward_hook(lambda _m, _i, out: dense.bias.expand_as(out).clone())
    try:
        ref, _ = run(adapter, cells)
    finally:
        handle.remove()
    with hooked(adapter, [spec]):
        out, _ = run(adapter, cells)
    real = torch.as_tensor(cells.attention_mask).bool()
    assert torch.allclose(out[real], ref[real], atol=1e-5)


@pytest.mark.parametrize("family", ["geneformer-sdpa", "scgpt-sdpa"])
def test_head_means_by_hand(family):
    adapter, cells = FAMILIES[family]()
    captured = []
    h = adapter.module(adapter.sites.head_output(0)).register_forward_pre_hook(lambda _m, a: captured.append(a[0]))
    run(adapter, cells)
    h.remove()
    x = captured[0][torch.as_tensor(cells.attention_mask).bool()].view(-1, N_HEADS, D_HEAD).mean(0)
    assert torch.allclose(head_output_means(adapter, cells, batch_size=2)[0], x, atol=1e-5)


@pytest.mark.parametrize("family", ["geneformer-sdpa", "scgpt-sdpa"])
def test_composition_and_cleanup_after_error(family):
    adapter, cells = FAMILIES[family]()
    specs = [InterventionSpec("zero_head", 0, (1,)), InterventionSpec("zero_mlp", 1)]
    assert intervention_key(specs) == intervention_key(specs[::-1]) == "zero_head@L0[1]+zero_mlp@L1"
    run(adapter, cells)
    before = hook_ids(adapter.model)
    with pytest.raises(RuntimeError, match="boom"):
        with hooked(adapter, specs) as report:
            run(adapter, cells)
            raise RuntimeError("boom")
    assert report.fired == {"zero_head@L0[1]": 1, "zero_mlp@L1": 1}
    assert hook_ids(adapter.model) == before
    with pytest.raises(ValueError, match="outside the model"):
        with hooked(adapter, [InterventionSpec("zero_head", 5, (0,))]):
            pass
    with pytest.raises(ValueError, match="needs dataset-mean"):
        with hooked(adapter, [InterventionSpec("mean_head", 0, (0,))]):
            pass
    assert hook_ids(adapter.model) == before
