"""The streaming store, on both model families, against a brute-force loop over the model's own explicit attention
weights (Geneformer: eager BERT ``output_attentions``; scGPT: the native model's explicit-softmax path), one cell at a
time, accumulated as a dense float64 ``[layers, heads, G, G]``: the pooled store's per-head source rows and columns,
float32, equal that dense reference's slices to 1e-5 relative, and its float64 layer sums and whole heads equal it to
float64 rounding of the forward; plus shard merging, grouped stores and the captured cell embeddings."""
import copy

import numpy as np
import pytest
import torch

from analysis.interp.attention import extract_attention, extract_grouped_attention
from tests.conftest import hook_ids, tiny_bert

FAMILIES = ("geneformer", "scgpt")
# sums of up to ~20 per pair; the sharpened (x900) scores put float32 rounding of the SDPA forward and the explicit
# path at ~1e-5 relative (scGPT's value-encoded inputs are larger than BERT's)
TOLERANCE = {"geneformer": 1e-5, "scgpt": 2e-4}


def eager_attentions(adapter):
    """Per cell: a function (token batch of one cell) -> list over layers of ``[heads, n, n]`` explicit weights."""
    if adapter.family == "geneformer":
        eager = tiny_bert(adapter.vocab_size, attn="eager")
        eager.load_state_dict(adapter.model.state_dict())

        def one(cell):
            with torch.no_grad():
                att = eager(input_ids=torch.as_tensor(cell.input_ids), attention_mask=torch.as_tensor(cell.attention_mask),
                            output_attentions=True).attentions
            return [a[0] for a in att]
        return one
    model = copy.deepcopy(adapter.model)
    model.set_attn_implementation("eager")
    layers = [lay.self_attn for lay in model.transformer_encoder.layers]
    for attn in layers:
        attn.keep_weights = True

    def one(cell):
        with torch.no_grad():
            model(torch.as_tensor(cell.input_ids), torch.as_tensor(cell.values), torch.as_tensor(cell.attention_mask))
        return [attn.last_weights[0] for attn in layers]
    return one


def brute_force(adapter, tokens, panel):
    """Python loop over every (query, key) pair of panel genes of every cell."""
    attentions = eager_attentions(adapter)
    slot = {int(g): i for i, g in enumerate(panel["gene_index"])}
    G, L, H = len(panel), adapter.n_layers, adapter.n_heads
    sums, counts = np.zeros((L, H, G, G)), np.zeros((G, G), dtype=np.int64)
    for c in range(tokens.n_cells):
        cell = tokens.subset(np.array([c]))
        att = attentions(cell)
        genes = cell.gene_index[0]
        for i in range(genes.size):
            for j in range(genes.size):
                if genes[i] in slot and genes[j] in slot:
                    a, b = slot[genes[i]], slot[genes[j]]
                    counts[a, b] += 1
                    for layer in range(L):
                        sums[layer, :, a, b] += att[layer][:, i, j].numpy()
    return sums, counts


def assert_matches_dense(store, sums, counts, atol):
    """The pooled store holds the dense reference's source rows, the columns of the sources that keep them, head
    means and whole heads."""
    src, cols = store.source_rows, store.column_rows
    assert np.array_equal(store.counts, counts) and store.counts.dtype == np.uint8
    assert np.allclose(store.head_rows, sums[:, :, src, :], rtol=1e-5, atol=atol)
    assert np.allclose(store.head_cols, np.swapaxes(sums[:, :, :, cols], 2, 3), rtol=1e-5, atol=atol)
    assert np.allclose(store.layer_sums, sums.mean(axis=1), rtol=1e-5, atol=atol)
    for name, matrix in store.full_heads.items():
        layer, head = (int(x) for x in name[1:].split("H"))
        assert np.allclose(matrix, sums[layer, head], rtol=1e-5, atol=atol)


@pytest.mark.parametrize("family", FAMILIES)
def test_store_equals_brute_force(family_setups, family):
    adapter, tokens, panel = family_setups[family]
    tokens = tokens.subset(np.arange(20))
    sources = np.array([0, 3, len(panel) - 1])
    store = extract_attention(adapter, tokens, panel, sources=sources, full_heads=((1, 2),), batch_size=7,
                              progress=False)
    sums, counts = brute_force(adapter, tokens, panel)
    assert np.array_equal(store.source_rows, sources) and set(store.full_heads) == {"L1H2"}
    assert store.head_rows.shape == (adapter.n_layers, adapter.n_heads, 3, len(panel))
    assert_matches_dense(store, sums, counts, TOLERANCE[family])
    assert store.head_rows.sum() > 1.0 and store.head_cols.sum() > 1.0  # not trivially zero
    if family == "scgpt":   # panel mode: every panel pair is in every cell's input
        assert (store.counts == tokens.n_cells).all()
    # columns kept for the two leading sources only (TFs first, a perturbed gene after), in another order
    partial = extract_attention(adapter, tokens, panel, sources=sources[[2, 0, 1]], n_columns=2, batch_size=7,
                                progress=False)
    assert partial.head_cols.shape == (adapter.n_layers, adapter.n_heads, 2, len(panel))
    assert partial.column_rows.tolist() == [len(panel) - 1, 0] and partial.params["n_columns"] == 2
    assert_matches_dense(partial, sums, counts, TOLERANCE[family])


def test_row_chunks_do_not_change_the_sums(family_setups):
    """Panel rows reduced a few at a time (a tiny chunk budget) give the same store as one chunk."""
    adapter, tokens, panel = family_setups["geneformer"]
    tokens = tokens.subset(np.arange(9))
    whole = extract_attention(adapter, tokens, panel, batch_size=4, progress=False)
    chunked = extract_attention(adapter, tokens, panel, batch_size=4, chunk_bytes=1024, progress=False)  # a row each
    for name in ("head_rows", "head_cols", "layer_sums"):
        assert np.allclose(getattr(chunked, name), getattr(whole, name), rtol=1e-6, atol=1e-6)


def test_default_sources_are_the_panels_tfs_and_perturbed_genes_with_the_tfs_columns(family_setups):
    from analysis.io.stores import column_count, source_genes

    _, _, panel = family_setups["geneformer"]
    flagged = panel.assign(is_tf=False, is_perturbed=False)
    flagged.loc[[1, 4], "is_tf"] = True
    flagged.loc[[4, 6], "is_perturbed"] = True
    assert source_genes(flagged).tolist() == [1, 4, 6]
    assert column_count(flagged, source_genes(flagged)) == 2                 # TFs keep columns, perturbed genes not
    asked = (str(flagged["symbol"][9]),)
    assert source_genes(flagged, asked).tolist() == [1, 4, 9, 6]             # genes asked for keep theirs too
    assert column_count(flagged, source_genes(flagged, asked), asked) == 3
    with pytest.raises(ValueError, match="NOT_A_GENE"):
        source_genes(flagged, ("NOT_A_GENE",))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kept", ["every gene", "source rows and columns"])
def test_grouped_store_equals_brute_force_per_group(family_setups, family, kept):
    """CSSI's per-group accumulation: each group's block equals the brute force over that group's cells (each head
    whole, or its rows and columns at a few source genes; the head mean over every pair), and the groups of each
    grouping (clusters, random groups) sum to the pooled store."""
    adapter, tokens, panel = family_setups[family]
    tokens = tokens.subset(np.arange(30))
    rng = np.random.default_rng(0)
    cluster = rng.integers(0, 3, tokens.n_cells)
    random_group = 3 + rng.integers(0, 2, tokens.n_cells)
    g = len(panel)
    sources = np.arange(g) if kept == "every gene" else np.array([1, 4, 6])
    grouped = extract_grouped_attention(adapter, tokens, panel, np.stack([cluster, random_group], 1), 5,
                                        layers=(1,), sources=sources, keep_cols=True, batch_size=6,
                                        chunk_bytes=4_000, progress=False)
    assert grouped.head_rows.shape == (5, 1, 4, sources.size, g) and grouped.head_rows.dtype == np.float32
    assert grouped.full_rows == (kept == "every gene") and (grouped.head_cols is None) == grouped.full_rows
    assert grouped.layer_sums.shape == (5, 1, g, g) and grouped.counts.dtype == np.uint8
    for group in (0, 4):
        cells = np.nonzero((cluster == group) | (random_group == group))[0]
        sums, counts = brute_force(adapter, tokens.subset(cells), panel)
        assert np.array_equal(grouped.counts[group], counts)
        assert np.allclose(grouped.head_rows[group, 0], sums[1][:, sources], rtol=1e-5, atol=TOLERANCE[family])
        if not grouped.full_rows:
            assert np.allclose(grouped.head_cols[group, 0], np.swapaxes(sums[1][:, :, sources], 1, 2), rtol=1e-5,
                               atol=TOLERANCE[family])
        assert np.allclose(grouped.layer_sums[group, 0], sums[1].mean(0), rtol=1e-5, atol=TOLERANCE[family])
    pooled = extract_attention(adapter, tokens, panel, sources=sources, progress=False)
    for grouping in (slice(0, 3), slice(3, 5)):
        assert np.array_equal(grouped.counts[grouping].sum(0), pooled.counts)
        assert np.allclose(grouped.head_rows[grouping, 0].sum(0), pooled.head_rows[1], rtol=1e-5, atol=1e-4)
        assert np.allclose(grouped.layer_sums[grouping, 0].sum(0), pooled.layer_sums[1], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_cell_embeddings_are_captured_during_extraction(family_setups, family):
    """``mean_penultimate``: mean over gene tokens of the second-to-last hidden state (Geneformer's default);
    ``cls``: the final output at <cls> (scGPT's), present only when the input has <cls>."""
    adapter, tokens, panel = family_setups[family]
    sub = tokens.subset(np.arange(6))
    store = extract_attention(adapter, sub, panel, batch_size=4, progress=False)
    hidden = [h.numpy() for h in adapter.forward(sub, output_hidden_states=True).hidden_states]
    genes = sub.gene_index >= 0
    expected = np.stack([hidden[-2][c][genes[c]].mean(0) for c in range(6)])
    assert np.allclose(store.cell_embeddings["mean_penultimate"], expected, atol=1e-5)
    if family == "scgpt":
        assert np.allclose(store.cell_embeddings["cls"], hidden[-1][:, 0], atol=1e-5)
    else:
        assert "cls" not in store.cell_embeddings   # V1-style tokens have no <cls>


def test_shards_merge_to_one_pass(family_setups):
    adapter, tokens, panel = family_setups["geneformer"]
    whole = extract_attention(adapter, tokens, panel, batch_size=16, progress=False)
    idx = np.arange(tokens.n_cells)
    a = extract_attention(adapter, tokens.subset(idx[:25]), panel, batch_size=5, progress=False)
    b = extract_attention(adapter, tokens.subset(idx[25:]), panel, batch_size=9, progress=False)
    merged = a + b
    assert merged.n_cells == whole.n_cells
    assert np.array_equal(merged.counts, whole.counts)
    for name in ("head_rows", "head_cols"):
        assert np.allclose(getattr(merged, name), getattr(whole, name), rtol=1e-6, atol=1e-5)
    assert np.allclose(merged.layer_sums, whole.layer_sums, atol=1e-9)
    assert merged.cell_embeddings["mean_penultimate"].shape == whole.cell_embeddings["mean_penultimate"].shape


def test_store_size_does_not_grow_with_cells(family_setups):
    adapter, tokens, panel = family_setups["geneformer"]
    few = extract_attention(adapter, tokens.subset(np.arange(5)), panel, progress=False)
    many = extract_attention(adapter, tokens, panel, progress=False)
    assert few.nbytes() == many.nbytes()


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_are_removed(family_setups, family):
    adapter, tokens, panel = family_setups[family]
    before = hook_ids(adapter.model)
    extract_attention(adapter, tokens.subset(np.arange(3)), panel, progress=False)
    assert hook_ids(adapter.model) == before


def test_output_attentions_requires_eager(family_setups):
    adapter, tokens, _ = family_setups["geneformer"]
    with pytest.raises(RuntimeError, match="eager"):
        adapter.forward(tokens.subset(np.arange(1)), output_attentions=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_control_cell_extraction_matches_brute_force_on_controls(small_screen, family_setups, family):
    """``extraction.cells = control`` (the paper's): the store over the selected cells equals the brute force over the
    control cells alone, and differs from the all-cell store (perturbed cells carry their perturbation's effect)."""
    cells = small_screen[0]
    adapter, tokens, panel = family_setups[family]
    controls = cells.select("control")
    labels = cells.obs["perturbation"].astype(str).to_numpy()
    assert np.array_equal(controls, np.nonzero(labels == "control")[0]) and 0 < controls.size < cells.n_cells
    assert np.array_equal(cells.select("all"), np.arange(cells.n_cells))
    store = extract_attention(adapter, tokens.subset(controls), panel, batch_size=5, progress=False)
    sums, counts = brute_force(adapter, tokens.subset(controls), panel)
    assert_matches_dense(store, sums, counts, TOLERANCE[family])
    everything = extract_attention(adapter, tokens, panel, batch_size=5, progress=False)
    with np.errstate(invalid="ignore"):
        assert not np.allclose(store.layer_sums / store.counts, everything.layer_sums / everything.counts, atol=1e-4,
                               equal_nan=True)
    with pytest.raises(Exception, match="no cell has that label"):
        cells.select("NOT_A_LABEL")
