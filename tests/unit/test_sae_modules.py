"""Co-activation modules (analysis.scoring.sae_modules) on planted blocks of features that fire together: each block
is one module, edges are the pairs whose activations correlate (checked with numpy's corrcoef), silent, dense and
unconnected features have none, and the result repeats for the same seed."""
from __future__ import annotations

import numpy as np
from scipy import sparse

from analysis.scoring.sae_modules import coactivation_modules


def planted_latents(rng, n_rows=3000):
    """Features 0-4 fire together, 5-8 together, 9-10 together (a block of two), 11-19 independently, 20 never,
    21 on every row (dense)."""
    x = np.zeros((n_rows, 22))
    for block in (range(0, 5), range(5, 9), range(9, 11)):
        on = rng.random(n_rows) < 0.1
        for f in block:
            x[on, f] = 1 + rng.random(on.sum())
    for f in range(11, 20):
        on = rng.random(n_rows) < 0.1
        x[on, f] = 1 + rng.random(on.sum())
    x[:, 21] = 1 + rng.random(n_rows)
    return x


def test_planted_blocks_are_modules(rng):
    x = planted_latents(rng)
    firing = (x > 0).mean(axis=0)
    module, layout, edges = coactivation_modules(sparse.csr_matrix(x), firing, firing > 0.5, min_r=0.3, seed=0)
    assert len(set(module[:5])) == 1 and len(set(module[5:9])) == 1 and module[0] != module[5]
    assert set(module[:9]) == {0, 1} and module[0] == 0                   # numbered by size: 5 before 4
    assert (module[9:] == -1).all()                                        # a pair is below min_size; the rest alone
    r = np.corrcoef(x[:, :11].T)
    want = {(a, b) for a in range(11) for b in range(a + 1, 11) if r[a, b] >= 0.3}
    assert {(int(a), int(b)) for a, b in zip(edges["a"], edges["b"])} == want
    np.testing.assert_allclose(edges["r"], [r[a, b] for a, b in zip(edges["a"], edges["b"])], rtol=1e-8)
    assert np.isfinite(layout[:11]).all() and np.isnan(layout[11:]).all()
    again = coactivation_modules(sparse.csr_matrix(x), firing, firing > 0.5, min_r=0.3, seed=0)
    np.testing.assert_array_equal(again[0], module)
    np.testing.assert_array_equal(again[1], layout)


def test_no_edges_no_modules(rng):
    x = planted_latents(rng)[:, 11:20]
    firing = (x > 0).mean(axis=0)
    module, layout, edges = coactivation_modules(sparse.csr_matrix(x), firing, firing > 0.5, min_r=0.3)
    assert (module == -1).all() and np.isnan(layout).all() and edges.empty
