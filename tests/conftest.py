"""Shared fixtures: tiny random BERT models, small simulated screens, paths to the real data in ../shared/data."""
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


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def hook_ids(model) -> set:
    """Every (module, hook id) installed on ``model``; transformers 5 adds its own output-capturing hooks on
    first use of output_hidden_states, so tests compare snapshots rather than expecting none."""
    return {(name, kind, hid) for name, m in model.named_modules()
            for kind, hooks in (("fwd", m._forward_hooks), ("pre", m._forward_pre_hooks)) for hid in hooks}
