"""The native scGPT model (shared/design/scgpt.md section 5): equivalence with a reference built from torch.nn layers
(scGPT's own non-flash layout), strict loading of the release layout and its variants, the full-size model from the
real args.json, attention rows against torch's MultiheadAttention, the attention tutorial's score, the <cls>
embedding and mask polarity, and the masked-value read-out by hand."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from analysis.config import TokenizerConfig
from analysis.errors import InputError
from analysis.interp.attention import capture_projections, panel_rows_attention
from analysis.io.cells import from_anndata
from analysis.models.base import ModelOutput, TokenizedCells, load_adapter
from analysis.models.scgpt.adapter import ScGPTAdapter
from analysis.models.scgpt.checkpoint import config_from_args, read_vocab, save_release
from analysis.models.scgpt.model import ScGPTModel
from tests.conftest import scgpt_adapter, shared_path, tiny_scgpt_parts
from tests.unit.test_scgpt_tokenizer import mixology_cells, name_table

D, HEADS, LAYERS = 16, 2, 2


@pytest.fixture(scope="module")
def real_vocab():
    return read_vocab(shared_path("scgpt/vocab_whole_human_60697.json"))


@pytest.fixture(scope="module")
def tiny_real(real_vocab, tmp_path_factory):
    """A tiny random model over the real 60,697-token vocabulary, saved in the release layout."""
    symbols = [s for s, _ in sorted(real_vocab.items(), key=lambda kv: kv[1])][:-3]
    model, args, vocab = tiny_scgpt_parts(symbols, seed=3, layers=LAYERS, heads=HEADS, hidden=D, d_hid=24)
    assert vocab == real_vocab
    directory = tmp_path_factory.mktemp("scgpt_tiny")
    save_release(model, args, vocab, directory)
    return directory, model, args, vocab


@pytest.fixture(scope="module")
def real_tokens(tiny_real):
    """Real sc_mixology cells, Ensembl ids mapped to the real vocabulary's symbols, zero-shot tokens over 300 genes:
    cells differ in their number of expressed genes, so the batch is padded."""
    directory, *_ = tiny_real
    adapter = load_adapter(directory, device="cpu")
    tokenizer = adapter.tokenizer(TokenizerConfig(mode="zero_shot"), shared_path("geneformer/dict_gc104M"))
    cells = mixology_cells(n_cells=12, symbol_to_id=name_table(), n_genes=300)
    tokens = tokenizer.tokenize(cells)
    assert len(set(tokens.lengths)) > 3     # padded batch
    return adapter, tokens


class ReferenceScGPT(nn.Module):
    """scGPT's non-flash model as torch.nn pieces, named like scGPT's torch backend (``self_attn.in_proj_*``)."""

    def __init__(self, vocab_size, pad_id):
        super().__init__()
        self.encoder = nn.ModuleDict({"embedding": nn.Embedding(vocab_size, D, padding_idx=pad_id),
                                      "enc_norm": nn.LayerNorm(D)})
        self.value_encoder = nn.ModuleDict({"linear1": nn.Linear(1, D), "linear2": nn.Linear(D, D),
                                            "norm": nn.LayerNorm(D)})
        self.transformer_encoder = nn.ModuleDict({"layers": nn.ModuleList(
            nn.TransformerEncoderLayer(D, HEADS, 24, dropout=0.0, batch_first=True) for _ in range(LAYERS))})
        self.decoder = nn.ModuleDict({"fc": nn.Sequential(nn.Linear(D, D), nn.LeakyReLU(), nn.Linear(D, D),
                                                          nn.LeakyReLU(), nn.Linear(D, 1))})
        self.mvc_decoder = nn.ModuleDict({"gene2query": nn.Linear(D, D), "W": nn.Linear(D, D, bias=False)})
        self.flag_encoder = nn.Embedding(2, D)

    def forward(self, ids, values, pad):
        gene = self.encoder["enc_norm"](self.encoder["embedding"](ids))
        v = self.value_encoder
        x = gene + v["norm"](v["linear2"](torch.relu(v["linear1"](values.clamp(max=512)[..., None]))))
        hidden = [x]
        for layer in self.transformer_encoder["layers"]:
            x = layer(x, src_key_padding_mask=pad)
            hidden.append(x)
        cell = x[:, 0]
        query = self.mvc_decoder["W"](torch.sigmoid(self.mvc_decoder["gene2query"](gene)))
        return hidden, cell, self.decoder["fc"](x)[..., 0], torch.bmm(query, cell[..., None])[..., 0]


def test_native_model_equals_torch_nn_reference(tiny_real, real_tokens):
    _, model, _, vocab = tiny_real
    adapter, tokens = real_tokens
    ref = ReferenceScGPT(len(vocab), vocab["<pad>"]).eval()
    ref.load_state_dict({k.replace("self_attn.Wqkv.", "self_attn.in_proj_"): v for k, v in model.state_dict().items()},
                        strict=True)
    ids, values = torch.as_tensor(tokens.input_ids), torch.as_tensor(tokens.values)
    keep = torch.as_tensor(tokens.attention_mask).bool()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            hidden, cell, pred, mvc = ref(ids, values, ~keep)
            out = adapter.model(ids, values, keep, output_hidden_states=True)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    for a, b in zip(out.hidden_states, hidden):
        assert torch.allclose(a[keep], b[keep], atol=1e-5)
    assert torch.allclose(out.cell_embedding, cell, atol=1e-5)
    assert torch.allclose(out.mlm_output[keep], pred[keep], atol=1e-5)
    assert torch.allclose(out.mvc_output[keep], mvc[keep], atol=1e-5)
    assert len(out.hidden_states) == LAYERS + 1


def layouts(state):
    """The same weights under the torch, HEAD-flash and DDP key layouts."""
    torch_layout = {k.replace("self_attn.Wqkv.", "self_attn.in_proj_"): v for k, v in state.items()}
    head = {k.replace("self_attn.", "self_attn._impl."): v for k, v in state.items()}
    ddp = {f"module.{k}": v for k, v in state.items()}
    return {"torch": torch_layout, "head_flash": head, "ddp": ddp}


def test_strict_round_trip_and_equivalent_layouts(tiny_real, real_tokens, tmp_path):
    directory, model, args, vocab = tiny_real
    _, tokens = real_tokens
    loaded = load_adapter(directory, device="cpu")
    assert isinstance(loaded, ScGPTAdapter) and loaded.checkpoint_sha256
    assert set(torch.load(directory / "best_model.pt", weights_only=True)) == set(model.state_dict())
    expected = loaded.forward(tokens).prediction
    keep = torch.as_tensor(tokens.attention_mask).bool()
    for name, state in layouts(model.state_dict()).items():
        d = tmp_path / name
        save_release(model, args, vocab, d)
        torch.save(state, d / "best_model.pt")
        assert torch.equal(load_adapter(d, device="cpu").forward(tokens).prediction[keep], expected[keep]), name


@pytest.mark.parametrize("case,message", [
    ("missing_wqkv", "lacks 1 key(s) of the scGPT model, first 'transformer_encoder.layers.1.self_attn.Wqkv.bias'"),
    ("wrong_shape", "'encoder.embedding.weight' has shape (60000, 16)"),
    ("batch_norm", "holds 'bn.running_mean'"),
    ("unexpected", "holds 1 key(s) the scGPT model does not have, first 'batch_encoder.weight'")])
def test_strict_loading_refuses_and_names_the_key(tiny_real, tmp_path, case, message):
    _, model, args, vocab = tiny_real
    state = dict(model.state_dict())
    if case == "missing_wqkv":
        del state["transformer_encoder.layers.1.self_attn.Wqkv.bias"]
    elif case == "wrong_shape":
        state["encoder.embedding.weight"] = torch.zeros(60000, D)
    elif case == "batch_norm":
        state["bn.running_mean"] = torch.zeros(D)
    else:
        state["batch_encoder.weight"] = torch.zeros(3, D)
    save_release(model, args, vocab, tmp_path)
    torch.save(state, tmp_path / "best_model.pt")
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_adapter(tmp_path, device="cpu")


def test_full_size_model_from_real_args_has_official_keys():
    args = json.loads(shared_path("scgpt/args_whole_human.json").read_text())
    vocab = read_vocab(shared_path("scgpt/vocab_whole_human_60697.json"))
    with torch.device("meta"):
        model = ScGPTModel(config_from_args(args, vocab, n_flag_rows=2))
    state = model.state_dict()
    assert len(state) == 163
    assert sum(p.numel() for p in model.parameters()) == 51_330_049
    assert tuple(state["encoder.embedding.weight"].shape) == (60697, 512)
    assert tuple(state["transformer_encoder.layers.11.self_attn.Wqkv.weight"].shape) == (1536, 512)
    assert tuple(state["decoder.fc.4.weight"].shape) == (1, 512)
    assert tuple(state["mvc_decoder.W.weight"].shape) == (512, 512) and "mvc_decoder.W.bias" not in state
    assert not any(k.startswith(("bn.", "cls_decoder.", "batch_encoder.")) for k in state)


def test_attention_rows_equal_multihead_attention_and_explicit_softmax(real_tokens):
    adapter, tokens = real_tokens
    keep = torch.as_tensor(tokens.attention_mask).bool()
    positions = torch.arange(tokens.input_ids.shape[1]).expand(tokens.n_cells, -1)
    adapter.model.set_attn_implementation("eager")
    for lay in adapter.model.transformer_encoder.layers:
        lay.self_attn.keep_weights = True
    try:
        with capture_projections(adapter) as cap:
            out = adapter.forward(tokens, output_hidden_states=True)
            for layer in range(LAYERS):
                ours = panel_rows_attention(cap[(layer, "query")], cap[(layer, "key")], keep, positions, HEADS)
                explicit = adapter.model.transformer_encoder.layers[layer].self_attn.last_weights
                mha = nn.MultiheadAttention(D, HEADS, batch_first=True).eval()
                attn = adapter.model.transformer_encoder.layers[layer].self_attn
                mha.load_state_dict({"in_proj_weight": attn.Wqkv.weight, "in_proj_bias": attn.Wqkv.bias,
                                     "out_proj.weight": attn.out_proj.weight, "out_proj.bias": attn.out_proj.bias})
                x = out.hidden_states[layer]
                with torch.no_grad():
                    _, weights = mha(x, x, x, key_padding_mask=~keep, need_weights=True, average_attn_weights=False)
                rows = keep[:, None, :, None].expand_as(ours) & keep[:, None, None, :].expand_as(ours)
                assert torch.allclose(ours[rows], weights[rows], atol=1e-6)
                assert torch.allclose(ours[rows], explicit[rows], atol=1e-6)
    finally:
        adapter.model.set_attn_implementation("sdpa")
        for lay in adapter.model.transformer_encoder.layers:
            lay.self_attn.keep_weights = False


def rank_normalise(scores):
    """The attention tutorial's steps 6-8: ranks within rows, then within columns, each / M; mean over heads."""
    m = scores.shape[-1]
    rows = torch.argsort(torch.argsort(scores, dim=-1), dim=-1) / m
    cols = torch.argsort(torch.argsort(rows.transpose(-1, -2), dim=-1), dim=-1).transpose(-1, -2) / m
    return cols.mean(1)


def test_tutorial_score_is_rank_normalised_softmax_attention(family_setups):
    """On an unpadded batch with float64 random weights (no ties): the tutorial's raw q.k score of the last layer,
    rank-normalised, equals the same normalisation of our per-head softmax attention."""
    _, tokens, _ = family_setups["scgpt"]
    model, args, vocab = tiny_scgpt_parts(list(tokens.genes["vocab_symbol"]), seed=5, layers=3, heads=4, hidden=32)
    adapter = scgpt_adapter(model.double(), args, vocab)
    sub = tokens.subset(np.arange(4))
    assert sub.attention_mask.all()
    with capture_projections(adapter) as cap:
        adapter.forward(sub)
    q, k = cap[(2, "query")], cap[(2, "key")]
    b, s, _ = q.shape
    raw = q.view(b, s, 4, 8).transpose(1, 2) @ k.view(b, s, 4, 8).permute(0, 2, 3, 1)   # no scale, no softmax
    ours = panel_rows_attention(q, k, torch.ones(b, s, dtype=torch.bool), torch.arange(s).expand(b, -1), 4)
    assert ours.dtype == torch.float64
    assert torch.equal(rank_normalise(raw), rank_normalise(ours))


def test_cls_embedding_and_mask_polarity(family_setups):
    adapter, tokens, _ = family_setups["scgpt"]
    sub = tokens.subset(np.arange(3))
    ids, values = torch.as_tensor(sub.input_ids), torch.as_tensor(sub.values)
    keep = torch.as_tensor(sub.attention_mask).bool()
    with torch.no_grad():
        out = adapter.model(ids, values, keep)
        assert torch.equal(out.cell_embedding, out.output[:, 0])
        perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(ids.shape[1] - 1)])
        permuted = adapter.model(ids[:, perm], values[:, perm], keep[:, perm])
        assert torch.allclose(permuted.cell_embedding, out.cell_embedding, atol=1e-5)   # no positional encoding
        pad_id = adapter.vocab["<pad>"]
        padded = adapter.model(torch.cat([ids, torch.full((3, 5), pad_id)], 1),
                               torch.cat([values, torch.full((3, 5), -2.0)], 1),
                               torch.cat([keep, torch.zeros(3, 5, dtype=torch.bool)], 1))
        assert torch.allclose(padded.cell_embedding, out.cell_embedding, atol=1e-5)     # keys masked, True = real
        inverted = adapter.model(torch.cat([ids, torch.full((3, 5), pad_id)], 1),
                                 torch.cat([values, torch.full((3, 5), -2.0)], 1),
                                 torch.cat([~keep, torch.ones(3, 5, dtype=torch.bool)], 1))
        assert not torch.allclose(inverted.cell_embedding, out.cell_embedding, atol=1e-3)  # polarity matters


def test_no_nested_tensor_reaches_a_hook(family_setups):
    adapter, tokens, _ = family_setups["scgpt"]
    seen = []
    handles = [m.register_forward_hook(lambda _m, i, o: seen.extend(t.is_nested for t in (*i, o)
                                                                    if isinstance(t, torch.Tensor)))
               for m in adapter.model.modules()]
    try:
        adapter.forward(tokens.subset(np.arange(5)))
    finally:
        for h in handles:
            h.remove()
    assert seen and not any(seen)


def test_masked_value_mse_by_hand():
    """``sum((pred - target)^2 mask) / sum(mask)`` per cell, and the exact-bin accuracy, on numbers by hand."""
    model, args, vocab = tiny_scgpt_parts(["A", "B", "C"], layers=1, heads=2, hidden=8, d_hid=8)
    adapter = scgpt_adapter(model, args, vocab)
    values = np.array([[-2, 3, 0, 7], [-2, 1, 2, -2]], dtype=np.float32)
    chosen = np.array([[False, True, True, False], [False, False, True, False]])
    pred = torch.tensor([[9.0, 2.6, 0.4, 1.0], [5.0, 5.0, 2.6, 5.0]])
    cells = TokenizedCells(np.zeros((2, 4), np.int64), np.ones((2, 4), np.int64), np.zeros((2, 4), np.int64),
                           pd.DataFrame(), pd.DataFrame(index=range(2)), {}, values)
    mse, exact = adapter.masked_prediction(ModelOutput(pred), cells, chosen)
    assert mse == pytest.approx([((2.6 - 3) ** 2 + 0.4 ** 2) / 2, (2.6 - 2) ** 2 / 1])
    assert exact.tolist() == [1.0, 0.0]
    masked = adapter.masked(cells, chosen)
    assert masked.values.tolist() == [[-2, -1, -1, 7], [-2, 1, -1, -2]]


def test_cells_from_real_data_need_symbols(real_vocab):
    """Ensembl-keyed data without a symbol table cannot be matched to scGPT's symbol vocabulary: a clear error."""
    from analysis.models.scgpt.tokenizer import ScGPTTokenizer

    cells = from_anndata(mixology_cells(n_cells=3, as_anndata=True), require_ensembl=False)
    tok = ScGPTTokenizer(real_vocab, n_bins=51, max_len=1200, source="vocab.json")
    with pytest.raises(InputError, match="none of the .* genes matches the scGPT vocabulary"):
        tok.tokenize(cells)
