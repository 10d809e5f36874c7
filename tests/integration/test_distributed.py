"""Attention extraction sharded over a real Dask cluster (a LocalCluster of two single-threaded worker processes)
equals the single-process extraction: counts exactly, sums to float64 rounding, embeddings at the cells' rows. A
worker killed in the middle of a shard (the process exits) has its shard retried by the scheduler; a resumed
extraction reuses the shards already on disk and extracts only the missing ones. Then the whole precompute with
``--workers 2`` writes the same run as one process."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.interp.attention import extract_attention
from analysis.stages.distributed import ModelSpec, extract_distributed, extract_shard, shard_cells

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    from analysis.stages.distributed import BoundThreads

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        c.register_plugin(BoundThreads())
        yield c


@pytest.fixture(scope="module")
def saved_model(family_setups, tmp_path_factory):
    """The tiny Geneformer of ``family_setups`` written as a checkpoint directory, with its tokens and panel."""
    adapter, tokens, panel = family_setups["geneformer"]
    directory = tmp_path_factory.mktemp("tiny-geneformer")
    adapter.save(directory)
    spec = ModelSpec(str(directory), "geneformer", "cpu", False, 0)
    reference = extract_attention(adapter, tokens, panel, batch_size=4, progress=False)
    return spec, tokens, panel, reference


def assert_same_store(got, want):
    assert np.array_equal(got.counts, want.counts) and got.n_cells == want.n_cells
    for name in ("head_rows", "head_cols"):   # float32 per-head sums: shards add in another order
        assert np.allclose(getattr(got, name), getattr(want, name), rtol=1e-6, atol=1e-6)
    assert np.allclose(got.layer_sums, want.layer_sums, rtol=1e-12, atol=1e-13)
    assert set(got.cell_embeddings) == set(want.cell_embeddings)
    for kind, emb in want.cell_embeddings.items():
        assert np.allclose(got.cell_embeddings[kind], emb, rtol=0, atol=1e-6)


def test_shards_are_whole_batches_in_the_single_process_order(saved_model):
    _, tokens, *_ = saved_model
    shards = shard_cells(tokens, 4, 4)
    order = np.concatenate(list(tokens.batches(4)))
    assert np.array_equal(np.concatenate(shards), order) and all(s.size % 4 == 0 for s in shards[:-1])


def test_sharded_extraction_equals_one_process(client, saved_model, tmp_path):
    spec, tokens, panel, reference = saved_model
    store = extract_distributed(client, spec, tokens, panel, batch_size=4, work_dir=tmp_path, n_shards=5)
    assert_same_store(store, reference)
    assert store.params["shards"] == 5 and store.params["workers"] == 2


def test_a_killed_worker_has_its_shard_retried(client, saved_model, tmp_path):
    spec, tokens, panel, reference = saved_model
    marker = tmp_path / "killed-once"

    def dies_once(spec, shard_tokens, panel, kept, batch_size, directory):
        if directory.endswith("shard-0002-of-0004") and not marker.exists():
            marker.touch()
            os._exit(1)       # the worker process dies mid-task, as a crashed or OOM-killed worker does
        return extract_shard(spec, shard_tokens, panel, kept, batch_size, directory)

    store = extract_distributed(client, spec, tokens, panel, batch_size=4, work_dir=tmp_path / "shards", n_shards=4,
                                task=dies_once)
    assert marker.exists()
    assert_same_store(store, reference)


def test_a_resumed_extraction_redoes_only_missing_shards(client, saved_model, tmp_path):
    spec, tokens, panel, reference = saved_model
    work = tmp_path / "shards"
    extract_distributed(client, spec, tokens, panel, batch_size=4, work_dir=work, n_shards=4)
    import shutil
    shutil.rmtree(work / "shard-0001-of-0004")      # as if the run was killed before this shard finished
    ran = tmp_path / "ran"
    ran.mkdir()

    def recording(spec, shard_tokens, panel, kept, batch_size, directory):
        (ran / Path(directory).name).touch()
        return extract_shard(spec, shard_tokens, panel, kept, batch_size, directory)

    store = extract_distributed(client, spec, tokens, panel, batch_size=4, work_dir=work, n_shards=4, task=recording)
    assert sorted(p.name for p in ran.iterdir()) == ["shard-0001-of-0004"]
    assert_same_store(store, reference)


def test_precompute_on_two_workers_writes_the_same_run(tmp_path):
    import precompute

    small = ["--quiet", "--model-family", "geneformer", "--set", "simulation.n_cells=120", "--set", "train.epochs=1",
             "--set", "train.hidden_size=32", "--set", "train.n_layers=2", "--set", "ranking.n_null=20",
             "--set", "ablation.n_cells=0", "--set", "cssi.n_fine=0"]
    cache = tmp_path / "cache"
    assert precompute.main(["--cache", str(cache), *small]) == 0
    (run_two,) = (cache / "artifacts").iterdir()
    run_one = run_two.rename(tmp_path / run_two.name)         # the same dataset and model, extracted again on Dask
    assert precompute.main(["--cache", str(cache), *small, "--workers", "2"]) == 0
    assert run_two.is_dir()                                   # the same run id: execution settings are not the config
    assert not (run_two / "attention_shards").exists()
    assert np.allclose(np.load(run_two / "attention_layer_sums.npy"), np.load(run_one / "attention_layer_sums.npy"),
                       rtol=1e-12)
    assert np.allclose(np.load(run_two / "attention_head_rows.npy"), np.load(run_one / "attention_head_rows.npy"),
                       rtol=1e-6, atol=1e-6)
    assert np.array_equal(np.load(run_two / "pair_counts.npy"), np.load(run_one / "pair_counts.npy"))
    for table in ("head_ranking", "perturbation_auroc"):
        a, b = (pd.read_parquet(r / f"{table}.parquet") for r in (run_one, run_two))
        # float32 per-head sums added in another order can swap near-tied pairs: an AUROC moves by a few 1/(pos x neg)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, atol=1e-4)
