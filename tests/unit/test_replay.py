"""The replay of unablated layers (analysis.interp.replay) on both families' tiny models: replayed layers compute
nothing (their query projections never run), hidden states are recorded as before, the result equals the full
forward, and a batch the replay was not made from is refused."""
import numpy as np
import pytest
import torch

from analysis.interp.replay import first_hooked_layer, replayed_layers
from analysis.interp.interventions import InterventionSpec

FAMILIES = ("geneformer", "scgpt")


@pytest.mark.parametrize("family", FAMILIES)
def test_replayed_layers_skip_their_compute_and_match_the_full_forward(family_setups, family):
    adapter, tokens, _ = family_setups[family]
    batch = tokens.subset(np.arange(5))
    full = adapter.forward(batch, output_hidden_states=True, decode=False)
    calls = []
    handle = adapter.module(adapter.sites.query(0).module).register_forward_hook(lambda *_: calls.append(1))
    try:
        with replayed_layers(adapter, full.hidden_states, 1):
            again = adapter.forward(batch, output_hidden_states=True, decode=False)
        assert not calls
        adapter.forward(batch)
        assert calls                                   # the layer's own forward is back after the block
    finally:
        handle.remove()
    assert len(again.hidden_states) == adapter.n_layers + 1
    for h, f in zip(again.hidden_states, full.hidden_states):
        assert torch.equal(h, f)
    with pytest.raises(RuntimeError, match="stored unablated output"), replayed_layers(adapter, full.hidden_states, 1):
        adapter.forward(tokens.subset(np.arange(5, 8)))


def test_first_hooked_layer():
    specs = (InterventionSpec("zero_mlp", 3), InterventionSpec("zero_head", 1, (0,)))
    assert first_hooked_layer(specs, 4) == 1 and first_hooked_layer((), 4) == 4
