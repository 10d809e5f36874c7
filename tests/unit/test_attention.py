"""The streaming store against a brute-force loop over a tiny random model's eager attentions."""
import numpy as np
import pytest
import torch

from analysis.interp.attention import extract_attention, extract_grouped_attention
from analysis.models.geneformer.adapter import GeneformerAdapter
from analysis.scoring.panel import select_panel
from analysis.models.geneformer.tokenizer import tokenize
from tests.conftest import hook_ids, tiny_bert


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


def test_grouped_store_equals_brute_force_per_group(setup):
    """CSSI's per-group accumulation: each group's block equals the brute force over that group's cells, and the
    groups of each grouping (clusters, random groups) sum to the pooled store."""
    tokens, panel, model, adapter = setup
    rng = np.random.default_rng(0)
    cluster = rng.integers(0, 3, tokens.n_cells)
    random_group = 3 + rng.integers(0, 2, tokens.n_cells)
    grouped = extract_grouped_attention(adapter, tokens, panel, np.stack([cluster, random_group], 1), 5,
                                        layers=(1,), batch_size=6, progress=False)
    assert grouped.sums.shape == (5, 1, 4, len(panel), len(panel)) and grouped.sums.dtype == np.float32
    for g in (0, 2, 4):
        cells = np.nonzero((cluster == g) | (random_group == g))[0]
        sums, counts = brute_force(model, tokens.subset(cells), panel)
        assert np.array_equal(grouped.counts[g], counts)
        assert np.allclose(grouped.sums[g, 0], sums[1], atol=1e-4)
    pooled = extract_attention(adapter, tokens, panel, progress=False)
    for grouping in (slice(0, 3), slice(3, 5)):
        assert np.array_equal(grouped.counts[grouping].sum(0), pooled.counts)
        assert np.allclose(grouped.sums[grouping, 0].sum(0), pooled.sums[1], atol=1e-4)


def test_cell_embeddings_are_mean_penultimate_hidden_state(setup):
    """Geneformer's default cell embedding: mean over gene tokens of the second-to-last hidden state."""
    tokens, panel, model, adapter = setup
    sub = tokens.subset(np.arange(6))
    store = extract_attention(adapter, sub, panel, batch_size=4, progress=False)
    with torch.no_grad():
        hidden = model(input_ids=torch.as_tensor(sub.input_ids), attention_mask=torch.as_tensor(sub.attention_mask),
                       output_hidden_states=True).hidden_states[-2].numpy()
    genes = sub.gene_index >= 0
    expected = np.stack([hidden[c][genes[c]].mean(0) for c in range(6)])
    assert store.cell_embeddings.shape == expected.shape
    assert np.allclose(store.cell_embeddings, expected, atol=1e-5)


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
    before = hook_ids(model)
    extract_attention(adapter, tokens.subset(np.arange(3)), panel, progress=False)
    assert hook_ids(model) == before


def test_output_attentions_requires_eager(setup):
    tokens, _, _, adapter = setup
    with pytest.raises(RuntimeError, match="eager"):
        adapter.forward(tokens.input_ids[:1], tokens.attention_mask[:1], output_attentions=True)
