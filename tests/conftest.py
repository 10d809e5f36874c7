"""Shared fixtures: tiny random models of both families (a BERT for Geneformer, the native scGPT), small simulated
screens tokenised for each, paths to the real data in ../shared/data."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"


def shared_path(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"shared data {p} not available")
    return p


@pytest.fixture(scope="session")
def small_screen():
    """(CellData, SimulatedNetwork, GeneformerDictionaries) for 60 simulated cells, identity medians."""
    from analysis.config import SimulationConfig
    from analysis.io.cells import from_anndata
    from analysis.sim.simulate import simulate_screen
    from analysis.models.geneformer.tokenizer import GeneformerDictionaries

    adata, net = simulate_screen(SimulationConfig(n_cells=60, seed=3))
    cells = from_anndata(adata, perturbation_col="perturbation", cell_state_col="cell_state")
    token = {"<pad>": 0, "<mask>": 1, **{g: i + 2 for i, g in enumerate(net.gene_ids)}}
    dicts = GeneformerDictionaries(token=token, median={g: 1.0 for g in net.gene_ids},
                                   name_to_id=dict(zip(net.symbols, net.gene_ids)))
    return cells, net, dicts


def tiny_bert(vocab_size: int, attn: str = "sdpa", seed: int = 0, layers: int = 2, heads: int = 4, hidden: int = 32):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=2 * hidden, max_position_embeddings=256, hidden_act="relu")
    model = BertForMaskedLM(cfg).eval()
    model.set_attn_implementation(attn)
    return model


def tiny_scgpt_parts(symbols, *, seed: int = 0, layers: int = 2, heads: int = 4, hidden: int = 32, d_hid: int = 48,
                     flag_rows: int = 2):
    """(model, args, vocab) of a tiny random scGPT over ``symbols`` (+ <pad>, <cls>, <eoc> as in whole-human)."""
    import torch

    from analysis.models.scgpt.checkpoint import config_from_args
    from analysis.models.scgpt.model import ScGPTModel

    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({"<pad>": len(vocab), "<cls>": len(vocab) + 1, "<eoc>": len(vocab) + 2})
    args = {"embsize": hidden, "nheads": heads, "nlayers": layers, "d_hid": d_hid, "dropout": 0.0, "n_bins": 51,
            "max_seq_len": 1200, "pad_token": "<pad>", "pad_value": -2, "mask_value": -1,
            "input_emb_style": "continuous"}
    torch.manual_seed(seed)
    model = ScGPTModel(config_from_args(args, vocab, n_flag_rows=flag_rows)).eval()
    return model, args, vocab


def scgpt_adapter(model, args, vocab):
    import torch

    from analysis.models.scgpt.adapter import ScGPTAdapter

    return ScGPTAdapter(model, device=torch.device("cpu"), name="tiny-scgpt", checkpoint_sha256=None, args=args,
                        vocab=vocab)


def geneformer_adapter(model):
    import torch

    from analysis.models.geneformer.adapter import GeneformerAdapter

    return GeneformerAdapter(model, device=torch.device("cpu"), name="tiny", checkpoint_sha256=None)


@pytest.fixture(scope="session")
def family_setups(small_screen):
    """Per family: (adapter, tokens, panel) of the 60-cell screen on a tiny random model with sharpened attention.
    Geneformer: rank-value tokens (max 96). scGPT: panel mode over a 45-gene panel (every cell: <cls> + panel)."""
    from analysis.config import TokenizerConfig
    from analysis.models.geneformer.tokenizer import tokenize
    from analysis.scoring.panel import select_panel

    cells, net, dicts = small_screen
    tfs = set(net.symbols[: net.n_tfs])
    tokens = tokenize(cells, dicts, max_len=96)
    panel = select_panel(cells, tokens.genes, tokens.gene_presence(), reference_tfs=tfs, n_hvg=30, panel_size=45)
    gf = geneformer_adapter(sharpen(tiny_bert(len(dicts.token), attn="sdpa", seed=1)))
    sc = scgpt_adapter(*tiny_scgpt_parts(list(cells.raw_symbols), seed=1))
    sharpen(sc)
    tokenizer = sc.tokenizer(TokenizerConfig())
    genes = tokenizer.vocabulary_genes(cells)
    sc_panel = select_panel(cells, genes, np.asarray((cells.counts > 0).sum(0)).ravel(), reference_tfs=tfs,
                            n_hvg=30, panel_size=45)
    return {"geneformer": (gf, tokens, panel), "scgpt": (sc, tokenizer.tokenize(cells, panel=sc_panel), sc_panel)}


def sharpen(model_or_adapter, factor: float = 30.0):
    """Random init attends almost uniformly (scores ~ 0); scale every query and key projection so that uniform
    attention is a real change (works on a model or an adapter of either family)."""
    import torch

    adapter = model_or_adapter if hasattr(model_or_adapter, "sites") else geneformer_adapter(model_or_adapter)
    with torch.no_grad():
        for layer in range(adapter.n_layers):
            for site in (adapter.sites.query(layer), adapter.sites.key(layer)):
                adapter.module(site.module).weight[site.start:site.stop].mul_(factor)
    return model_or_adapter


# the embedded default at test size: both families, 150 cells (about 55 controls: 12 fine clusters of >= 3 cells, so
# that both models' cells form about 11 and 4 strata exist off the grid; with >= 4 cells the merges of small clusters
# left Geneformer 5 to 7, as its one-epoch model varied with the number of threads it trained on), CSSI grid without
# 4 strata (so the CSSI page can move the slider off the grid); one precompute
# per session, shared by the integration and browser tests
SMALL = ["--quiet", "--set", "simulation.n_cells=150", "--set", "train.epochs=1", "--set", "train.hidden_size=32",
         "--set", "train.n_layers=2", "--set", "ranking.n_null=30", "--set", "ablation.n_cells=40",
         "--set", "cssi.n_strata=2,3,5", "--set", "cssi.primary_n_strata=3", "--set", "cssi.min_size=3",
         "--set", "cssi.n_null=20", "--set", "cssi.n_gene_null=5", "--set", "cssi.synthetic_seeds=1",
         "--set", "cssi.n_fine=12", "--name", "small"]


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """(cache, family -> run directory) of one precompute of the embedded default at test size."""
    import precompute

    cache = tmp_path_factory.mktemp("embedded")
    assert precompute.main(["--cache", str(cache), *SMALL]) == 0
    runs = {d.name.split("-")[1]: d for d in (cache / "artifacts").iterdir()}
    return cache, runs


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def hook_ids(model) -> set:
    """Every (module, hook id) installed on ``model``; transformers 5 adds its own output-capturing hooks on
    first use of output_hidden_states, so tests compare snapshots rather than expecting none."""
    return {(name, kind, hid) for name, m in model.named_modules()
            for kind, hooks in (("fwd", m._forward_hooks), ("pre", m._forward_pre_hooks)) for hid in hooks}
