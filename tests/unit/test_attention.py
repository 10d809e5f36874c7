"""The streaming store against a brute-force loop over a tiny random model's eager attentions."""
import numpy as np
import pytest
import torch

from analysis.attention import extract_attention
from analysis.models.geneformer import GeneformerAdapter
from analysis.panel import select_panel
from analysis.tokenize import tokenize
from tests.conftest import tiny_bert


@pytest.fixture(scope="module")
def setup(small_screen):
    cells, net, dicts = small_screen
    tokens = tokenize(cells, dicts, max_len=96)
    panel = select_panel(cells, tokens, reference_tfs=set(net.symbols[: net.n_tfs]), n_hvg=30, panel_size=45)
    model = tiny_bert(len(dicts.token), attn="sdpa", seed=1)
    adapter = GeneformerAdapter(model, device=torch.device("cpu"), name="tiny", checkpoint_sha256=None)
    return tokens, panel, model, adapter


def brute_force(model, tokens, panel, n_layers=2, n_heads=4):
    """Eager attentions, one cell at a time, Python loop over every (query, key) pair of panel genes."""
    eager = tiny_bert(model.config.vocab_size, attn="eager")
    eager.load_state_dict(model.state_dict())
    slot = {int(g): i for i, g in enumerate(panel["gene_index"])}
    G = len(panel)
    sums, counts = np.zeros((n_layers, n_heads, G, G)), np.zeros((G, G), dtype=np.int64)
    for c in range(tokens.n_cells):
        n = int(tokens.lengths[c])
        with torch.no_grad():
            att = eager(input_ids=torch.as_tensor(tokens.input_ids[c:c + 1, :n]),
                        attention_mask=torch.ones(1, n, dtype=torch.long), output_attentions=True).attentions
        genes = tokens.gene_index[c, :n]
        for i in range(n):
            for j in range(n):
                if genes[i] in slot and genes[j] in slot:
                    a, b = slot[genes[i]], slot[genes[j]]
                    counts[a, b] += 1
                    for layer in range(n_layers):
                        sums[layer, :, a, b] += att[layer][0, :, i, j].numpy()
    return sums, counts


def test_store_equals_brute_force(setup):
    tokens, panel, model, adapter = setup
    store = extract_attention(adapter, tokens, panel, batch_size=7, progress=False)
    sums, counts = brute_force(model, tokens, panel)
    assert np.array_equal(store.counts, counts)
    assert np.allclose(store.sums, sums, atol=1e-5)
    assert store.sums.sum() > 1.0  # not trivially zero


def test_shards_merge_to_one_pass(setup):
    tokens, panel, _, adapter = setup
    whole = extract_attention(adapter, tokens, panel, batch_size=16, progress=False)
    idx = np.arange(tokens.n_cells)
    a = extract_attention(adapter, tokens.subset(idx[:25]), panel, batch_size=5, progress=False)
    b = extract_attention(adapter, tokens.subset(idx[25:]), panel, batch_size=9, progress=False)
    merged = a + b
    assert merged.n_cells == whole.n_cells
    assert np.array_equal(merged.counts, whole.counts)
    assert np.allclose(merged.sums, whole.sums, atol=1e-9)


def test_store_size_does_not_grow_with_cells(setup):
    tokens, panel, _, adapter = setup
    few = extract_attention(adapter, tokens.subset(np.arange(5)), panel, progress=False)
    many = extract_attention(adapter, tokens, panel, progress=False)
    assert few.sums.nbytes == many.sums.nbytes and few.counts.nbytes == many.counts.nbytes


def test_hooks_are_removed(setup):
    tokens, panel, model, adapter = setup
    extract_attention(adapter, tokens.subset(np.arange(3)), panel, progress=False)
    assert all(not m._forward_hooks for m in model.modules())


def test_output_attentions_requires_eager(setup):
    tokens, _, _, adapter = setup
    with pytest.raises(RuntimeError, match="eager"):
        adapter.forward(tokens.input_ids[:1], tokens.attention_mask[:1], output_attentions=True)
