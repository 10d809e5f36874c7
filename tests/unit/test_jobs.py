"""The app's background jobs are forked from a launcher, never from the threaded server: a real worker started while
the server holds a diskcache write transaction still writes its result once the transaction ends (a worker forked
from the server at that instant inherits SQLite's lock bookkeeping and times out), runs in its own process, and
leaves the server's connection alone; cancelling kills the worker; an unregistered job is refused by name. The queue
is bounded, a request its admission check refuses forks nothing, and a job nobody polls is ended."""
from __future__ import annotations

import os
import time

import diskcache
import pytest

from app.jobs import NO_WORKER, ForkSafeDiskcacheManager


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


def _stamper(cache):
    """A job that records when it started and ended, holding its worker 1.5 s."""
    def job(result_key, progress_key, args, context):
        start = time.monotonic()
        time.sleep(1.5)
        cache.set(result_key, (start, time.monotonic()))
    return job


def _admit(value):
    return None if value == "compute" else f"refused {value}"


def _guarded(cache):
    def fn(value):
        cache.set("guarded-ran", value)
        return f"computed {value}"
    fn.admit, fn.busy = _admit, (lambda message: message)
    return fn


def test_queue_is_bounded(tmp_path):
    """max_jobs = 1 and one waiting place: the second job waits for the first (its progress says queued); a third
    is refused by name without a worker (a job without an admission check has no outputs to answer with)."""
    cache = diskcache.Cache(str(tmp_path / "jobs"))
    manager = ForkSafeDiskcacheManager(cache, max_jobs=1, max_queued_jobs=1, abandon_after_s=60)
    manager.func_registry["stamp"] = _stamper(cache)
    manager.start_launcher()
    try:
        first = manager.call_job_fn("a", manager.func_registry["stamp"], [], {})
        second = manager.call_job_fn("b", manager.func_registry["stamp"], [], {})
        with pytest.raises(RuntimeError, match="Busy: 2 background jobs are running or queued"):
            manager.call_job_fn("c", manager.func_registry["stamp"], [], {})
        assert _wait_for(cache, "b-progress", seconds=10)[1].startswith("queued")
        a, b = _wait_for(cache, "a", seconds=30), _wait_for(cache, "b", seconds=30)
        assert b[0] >= a[1] - 0.05                                    # the second started when the first ended
        assert first != second and not manager.job_running(first)
    finally:
        manager.stop_launcher()


def test_admission_answers_without_a_worker_and_busy_is_answered(tmp_path):
    import psutil
    cache = diskcache.Cache(str(tmp_path / "jobs"))
    manager = ForkSafeDiskcacheManager(cache, max_jobs=1, max_queued_jobs=0, abandon_after_s=60)
    manager.func_registry["sleeper"] = _sleeper
    manager.register("guarded", _guarded(cache), False)
    manager.start_launcher()
    try:
        launcher = psutil.Process(manager._launcher.pid)
        guarded = manager.func_registry["guarded"]
        assert manager.call_job_fn("r", guarded, ["bad"], {}) == NO_WORKER
        assert cache.get("r") == "refused bad" and not launcher.children()   # answered, nothing forked
        pid = manager.call_job_fn("s", manager.func_registry["sleeper"], [], {})
        assert manager.call_job_fn("t", guarded, ["compute"], {}) == NO_WORKER   # the one slot is taken
        assert cache.get("t").startswith("Busy: 1 background jobs") and len(launcher.children()) == 1
        manager.terminate_job(pid)
        worker = manager.call_job_fn("u", guarded, ["compute"], {})
        assert worker != NO_WORKER and _wait_for(cache, "u") == "computed compute"
    finally:
        manager.stop_launcher()


def test_a_job_nobody_polls_is_ended(tmp_path):
    cache = diskcache.Cache(str(tmp_path / "jobs"))
    manager = ForkSafeDiskcacheManager(cache, max_jobs=2, abandon_after_s=1.5)
    manager.func_registry["sleeper"] = _sleeper
    manager.start_launcher()
    try:
        polled = manager.call_job_fn("p", manager.func_registry["sleeper"], [], {})
        left = manager.call_job_fn("q", manager.func_registry["sleeper"], [], {})
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            assert manager.job_running(polled)                       # its page keeps asking: it lives
            time.sleep(0.3)
        assert not psutil_running(left)                              # nobody asked about it: ended
        manager.terminate_job(polled)
    finally:
        manager.stop_launcher()


def psutil_running(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


SERVER = """
import sys, time, diskcache
from app.jobs import ForkSafeDiskcacheManager
manager = ForkSafeDiskcacheManager(diskcache.Cache(sys.argv[1]))
manager.start_launcher()
print(manager._launcher.pid, flush=True)
time.sleep(600)
"""


def test_launcher_ends_with_its_server(tmp_path):
    """A server ended by SIGTERM runs no cleanup: its launcher must still go (it sees the pipe close), or every
    `python -m app` stopped so leaves a process behind. stop_launcher ends it too (at the pipe's end)."""
    import subprocess
    import sys

    import psutil
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path / "jobs")], cwd=root,
                              stdout=subprocess.PIPE, text=True)
    launcher = psutil.Process(int(server.stdout.readline()))
    server.terminate()
    server.wait(30)
    try:
        launcher.wait(10)
    except psutil.TimeoutExpired:
        launcher.kill()
        pytest.fail("the launcher outlived its server by 10 s")
    manager = ForkSafeDiskcacheManager(diskcache.Cache(str(tmp_path / "jobs2")))
    manager.start_launcher()
    process = manager._launcher
    manager.stop_launcher()                 # joins for at most 10 s, killing nothing: alive after it = never ended
    assert not process.is_alive() and process.exitcode == 0
