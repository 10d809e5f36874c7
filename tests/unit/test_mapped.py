"""Memory-mapped stores hand back the pages a scan read: the resident set of this process, measured, grows by a
file's size while it is read and falls back when its pages are released, with the values unchanged; a scan of every
source row through :class:`~analysis.scoring.edges.HeadEdges` holds one read's pages at a time, and the layer means
are made from the mapped layer sums without keeping the file's pages next to the result."""
import numpy as np
import pandas as pd
import psutil

from analysis.io import mapped
from analysis.io.stores import AttentionStore
from analysis.scoring.edges import attention_edges, mean_scores

MIB = 2 ** 20


def resident() -> int:
    return psutil.Process().memory_info().rss


def test_released_pages_leave_the_resident_set_and_read_back_unchanged(tmp_path):
    values = np.random.default_rng(0).random((64, 2 ** 18), dtype=np.float32)              # 64 MiB
    np.save(tmp_path / "a.npy", values)
    array = mapped.load(tmp_path / "a.npy")
    before = resident()
    total = float(np.asarray(array, dtype=np.float64).sum(dtype=np.float64))
    read = resident()
    mapped.release(array.reshape(-1))                                    # a view releases the map it shares
    released = resident()
    assert read - before > 48 * MIB and read - released > 48 * MIB
    assert float(np.asarray(array, dtype=np.float64).sum(dtype=np.float64)) == total
    np.testing.assert_array_equal(array[7], values[7])
    mapped.release_all()
    assert resident() - released < 16 * MIB
    mapped.release(values, None)                                         # arrays in memory are left alone
    assert float(values.sum(dtype=np.float64)) == np.float32(values).sum(dtype=np.float64)


def test_a_scan_of_every_source_row_holds_one_read_at_a_time(tmp_path):
    rng = np.random.default_rng(1)
    layers, heads, n_sources, g = 4, 8, 256, 1024                                           # rows: 32 MiB
    panel = pd.DataFrame({"symbol": [f"G{i}" for i in range(g)], "gene_id": [f"E{i}" for i in range(g)]})
    counts = np.full((g, g), 3, dtype=np.uint8)
    store = AttentionStore(np.arange(n_sources), rng.random((layers, heads, n_sources, g), dtype=np.float32),
                           rng.random((layers, heads, 16, g), dtype=np.float32),
                           rng.random((layers, g, g)), counts, 3, panel)
    store.save(tmp_path)
    expected = store.head_rows[:, :, 200] / 3
    heads_edges, _ = attention_edges(AttentionStore.load(tmp_path))
    del store
    mapped.release_all()
    before, peak = resident(), 0
    for row in range(n_sources):
        scores = heads_edges.oriented(np.array([row]), "tf_to_target")
        peak = max(peak, resident() - before)
        if row == 200:
            np.testing.assert_allclose(scores[:, 0], expected.reshape(layers * heads, g), rtol=1e-6)
    assert peak < 8 * MIB                      # without the release the scan ends holding all 32 MiB of rows


def test_layer_means_from_a_mapped_store_hold_the_result_and_not_the_file(tmp_path):
    rng = np.random.default_rng(2)
    layers, g = 8, 1024                                                             # sums and means: 64 MiB each
    panel = pd.DataFrame({"symbol": [f"G{i}" for i in range(g)], "gene_id": [f"E{i}" for i in range(g)]})
    counts = rng.integers(0, 4, (g, g)).astype(np.uint8)
    sums = rng.random((layers, g, g))
    AttentionStore(np.arange(2), rng.random((layers, 2, 2, g), dtype=np.float32),
                   rng.random((layers, 2, 1, g), dtype=np.float32), sums, counts, 3, panel).save(tmp_path)
    store = AttentionStore.load(tmp_path)
    mapped.release_all()
    before = resident()
    _, layer_means = attention_edges(store)
    grown = resident() - before
    np.testing.assert_array_equal(layer_means.scores, mean_scores(sums, counts))
    assert np.isnan(layer_means.scores[:, counts == 0]).all()
    assert grown < 96 * MIB             # the 64 MiB result at most (freed heap may hold part of it); kept pages of
    #                                     the sums would add their 64 MiB (129 MiB measured before the release)
