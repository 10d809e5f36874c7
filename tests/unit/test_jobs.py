"""The app's background-job manager forks workers that never touch the SQLite connections they inherit (a worker
that closed one while another server thread was inside SQLite hung forever): a real worker, forked by the real
manager from a process whose diskcache connection is open, runs its job on a fresh connection, finds the inherited
connection still open, and writes its result where the server reads it."""
from __future__ import annotations

import sqlite3
import time

import diskcache

from app.jobs import ForkSafeDiskcacheManager


def _job(result_key, progress_key, args, context):
    from app import jobs
    inherited = jobs._INHERITED[-1].con
    cache = args[0]
    try:
        inherited.execute("select 1")
        still_open = True
    except sqlite3.ProgrammingError:
        still_open = False
    cache.get("warm")                                      # opens the worker's own connection
    cache.set(result_key, {"inherited_open": still_open, "fresh": cache._local.con is not inherited,
                           "context": context})


def test_worker_uses_fresh_connections_and_leaves_the_inherited_one_alone(tmp_path):
    cache = diskcache.Cache(str(tmp_path / "jobs"))
    cache.set("warm", 1)                                   # the parent's connection is open before the fork
    parent_con = cache._local.con
    manager = ForkSafeDiskcacheManager(cache)
    pid = manager.call_job_fn("result", _job, (cache,), {"job": "probe"})
    deadline = time.monotonic() + 60
    while cache.get("result") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.get("result") == {"inherited_open": True, "fresh": True, "context": {"job": "probe"}}
    assert cache._local.con is parent_con and cache.get("warm") == 1   # the parent's handle is untouched
    manager.terminate_job(pid)
