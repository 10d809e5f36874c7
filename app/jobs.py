"""Background-job manager for the app's Dash background callbacks, safe to start jobs from a threaded server.

Dash's DiskcacheManager forks each worker from the request thread that started the job. A fork copies SQLite's
in-process lock bookkeeping as it is at that instant: if another request thread was inside a diskcache transaction
(publishing a figure for export, storing a job result), the child believes that lock is still held by a connection
that will never release it in the child. Seen both ways: a worker closing the inherited connection hung in
``Cache.close``, and a worker with a fresh connection waited out SQLite's busy timeout on ``cache.set`` and died
with ``diskcache.Timeout`` (its result never arrived).

So workers are not forked from the server. ``start_launcher`` forks one small launcher process once, after every
callback is registered and before the server takes a request, while no thread is inside SQLite (and from a fresh
thread, so no OpenMP thread pool is copied half-alive into it); each job is then
forked from the launcher, which never touches SQLite, and starts with fresh thread-local connections (the idle
ones copied at launch are kept referenced, never closed). The server sends the launcher only the job's registry key,
cache keys, arguments and callback context (pickled), and gets the worker's pid back, which Dash uses to poll and
cancel as before."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import traceback

from dash import DiskcacheManager

_INHERITED: list = []   # the launcher's copy of the server's idle per-thread connections, held (never closed)


def _run_job(cache, job_fn, job_args) -> None:
    """In a freshly forked worker: replace the cache's thread-local connection store, then run Dash's job function."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)   # the launcher ignores it; the job's own subprocesses must not
    _INHERITED.append(cache._local)
    cache._local = threading.local()
    job_fn(*job_args)


def _launch_loop(cache, registry: dict, connection) -> None:
    """The launcher: fork one worker per request ``(registry key, job args)`` and answer with its pid, until the
    server closes the pipe. Finished workers are reaped by the kernel (SIGCHLD ignored), so a pid that is gone means
    the job ended, as Dash's ``job_running`` expects."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while True:
        try:
            registry_key, job_args = connection.recv()
        except EOFError:
            return
        except Exception as exc:  # noqa: BLE001 - a request that cannot be unpickled is refused, the launcher lives on
            connection.send(("error", f"the job's arguments could not be received: {exc!r}"))
            continue
        job_fn = registry.get(registry_key)
        if job_fn is None:
            connection.send(("error", f"background callback {registry_key} was registered after the launcher "
                                      "started; register every callback before start_launcher()"))
            continue
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _run_job(cache, job_fn, job_args)
            except BaseException:  # noqa: BLE001 - Dash's job function stores its own errors; anything else is fatal
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        connection.send(("ok", pid))


class ForkSafeDiskcacheManager(DiskcacheManager):
    """DiskcacheManager whose workers are forked from a launcher that never held an SQLite lock (module doc)."""

    def __init__(self, cache, **kwargs):
        super().__init__(cache, **kwargs)
        self._launcher = None
        self._pipe = None
        self._pipe_lock = threading.Lock()

    def start_launcher(self) -> None:
        """Fork the launcher now. Call once, after every background callback is registered and before serving."""
        if self._launcher is not None:
            raise RuntimeError("the job launcher is already running")
        server_end, launcher_end = multiprocessing.Pipe()
        process = multiprocessing.get_context("fork").Process(
            target=_launch_loop, args=(self.handle, dict(self.func_registry), launcher_end),
            name="dash-job-launcher", daemon=True)
        # Forked from a thread that has never run an OpenMP region: GNU OpenMP keeps its worker pool per thread,
        # and a child forked from a thread whose pool exists waits forever on the pool's (absent) threads at its
        # first parallel torch op (seen: a live ablation job idle in the attention forward).
        starter = threading.Thread(target=process.start, name="dash-job-launcher-start")
        starter.start()
        starter.join()
        launcher_end.close()
        self._launcher, self._pipe = process, server_end

    def stop_launcher(self) -> None:
        """Close the pipe (the launcher exits at EOF) and wait for it; running workers are left to finish."""
        if self._launcher is None:
            return
        self._pipe.close()
        self._launcher.join(10)
        self._launcher = self._pipe = None

    def call_job_fn(self, key, job_fn, args, context):
        if self._launcher is None:
            raise RuntimeError("background jobs need the launcher: call start_launcher() before serving requests")
        registry_key = next((k for k, fn in self.func_registry.items() if fn is job_fn), None)
        with self._pipe_lock:
            self._pipe.send((registry_key, (key, self._make_progress_key(key), args, context)))
            status, value = self._pipe.recv()
        if status != "ok":
            raise RuntimeError(value)
        return value
