"""The app's background jobs are forked from a launcher, never from the threaded server: a real worker started while
the server holds a diskcache write transaction still writes its result once the transaction ends (a worker forked
from the server at that instant inherits SQLite's lock bookkeeping and times out), runs in its own process, and
leaves the server's connection alone; cancelling kills the worker; an unregistered job is refused by name."""
from __future__ import annotations

import os
import time

import diskcache
import pytest

from app.jobs import ForkSafeDiskcacheManager


def _probe(cache):
    """A job closing over the cache, as Dash's job functions do (they reach the worker by fork, not by pickle)."""
    return lambda result_key, progress_key, args, context: _job(cache, result_key, context)


def _job(cache, result_key, context):
    import os
    cache.set(result_key, {"pid": os.getpid(), "context": context})


def _sleeper(result_key, progress_key, args, context):
    time.sleep(600)


def _wait_for(cache, key, seconds=60):
    deadline = time.monotonic() + seconds
    while cache.get(key) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return cache.get(key)


@pytest.fixture
def manager(tmp_path):
    cache = diskcache.Cache(str(tmp_path / "jobs"), timeout=2)   # a lock inherited mid-transaction fails in 2 s
    cache.set("warm", 1)                                          # the server's connection is open at launch
    manager = ForkSafeDiskcacheManager(cache)
    manager.func_registry.update(probe=_probe(cache), sleeper=_sleeper)
    manager.start_launcher()
    yield manager
    manager.stop_launcher()


def test_worker_started_inside_a_server_transaction_writes_its_result(manager):
    cache = manager.handle
    parent_con = cache._local.con
    with cache.transact():                                        # another request thread is inside SQLite
        cache.set("in-flight", 1)
        manager.call_job_fn("result", manager.func_registry["probe"], ["x"], {"job": "probe"})
        time.sleep(0.5)                                           # the worker is running while the lock is held
    result = _wait_for(cache, "result")
    assert result is not None, "the worker never wrote its result"
    assert result["context"] == {"job": "probe"} and result["pid"] not in (os.getpid(), manager._launcher.pid)
    assert cache._local.con is parent_con and cache.get("warm") == 1   # the server's handle is untouched


def test_cancel_kills_the_worker_and_unregistered_jobs_are_refused(manager):
    pid = manager.call_job_fn("slow", manager.func_registry["sleeper"], (), {})
    assert manager.job_running(pid)
    manager.terminate_job(pid)
    assert not manager.job_running(pid)
    with pytest.raises(RuntimeError, match="registered after the launcher started"):
        manager.call_job_fn("late", lambda *a: None, (), {})


def _parallel_torch(cache):
    def job(result_key, progress_key, args, context):
        import torch
        cache.set(result_key, float(torch.ones(4_000_000).exp().sum()))
    return job


def test_worker_runs_parallel_torch_after_the_server_thread_used_openmp(tmp_path):
    """GNU OpenMP keeps its pool per thread: a worker forked (via the launcher) from a thread whose pool exists
    hangs at its first parallel op. The launcher is started from a fresh thread, so the worker computes."""
    import torch
    torch.set_num_threads(2)
    assert float(torch.ones(4_000_000).exp().sum()) > 0          # this thread now owns an OpenMP pool
    cache = diskcache.Cache(str(tmp_path / "jobs"))
    manager = ForkSafeDiskcacheManager(cache)
    manager.func_registry["torch"] = _parallel_torch(cache)
    manager.start_launcher()
    pid = manager.call_job_fn("sum", manager.func_registry["torch"], [], {})
    try:
        assert _wait_for(cache, "sum", seconds=90) == pytest.approx(4_000_000 * 2.718281828, rel=1e-3)
    finally:
        manager.terminate_job(pid)                                # a hung worker is not left behind
        manager.stop_launcher()
