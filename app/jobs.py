"""Background-job manager for the app's Dash background callbacks, safe to fork from a threaded server.

Dash's DiskcacheManager forks a worker from the request thread that started the job, and the worker then uses the
server's diskcache handle. diskcache notices the new process id and *closes* the connection it inherited; if another
request thread was inside SQLite at the moment of the fork (publishing a figure for export, reading a cached job),
SQLite's mutex is held forever in the child and the close never returns (seen: a CSSI level job stuck in
``Cache.close`` with the test session waiting on it). The worker here starts with fresh thread-local connections and
keeps the inherited ones referenced, never closed or collected, so nothing in the child touches SQLite state copied
mid-operation from the parent."""
from __future__ import annotations

import threading

from dash import DiskcacheManager

_INHERITED: list = []   # the parent's per-thread connections, held (not closed) for the worker's lifetime


def _with_fresh_connections(cache, job_fn, job_args) -> None:
    """Worker entry point: replace the cache's thread-local connection store, then run Dash's job function."""
    _INHERITED.append(cache._local)
    cache._local = threading.local()
    job_fn(*job_args)


class ForkSafeDiskcacheManager(DiskcacheManager):
    """DiskcacheManager whose workers never reuse or close the parent's SQLite connections (module doc)."""

    def call_job_fn(self, key, job_fn, args, context):
        from multiprocess import Process  # Dash's own dependency, the same process class its manager uses

        process = Process(target=_with_fresh_connections,
                          args=(self.handle, job_fn, (key, self._make_progress_key(key), args, context)))
        process.start()
        return process.pid
