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
cancel as before.

Bounds (the app's settings ``max_jobs``, ``max_queued_jobs``, ``abandon_after_s``):

- admission: a callback marked :func:`admitted_by` has its check run in the server before anything is forked; a
  refused request (bad values, a result already cached) is answered at once, with no worker;
- a queue: at most ``max_jobs`` workers compute at once (each holds one slot lock, so a killed worker frees its
  slot); up to ``max_queued_jobs`` more wait, sleeping, with their progress saying so; beyond that a request is
  answered "busy" without a worker;
- abandonment: Dash's client polls a running job about once a second; a job not polled for ``abandon_after_s``
  (its page was closed or left) is killed."""
from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import psutil
from dash import DiskcacheManager

log = logging.getLogger(__name__)
_INHERITED: list = []   # the launcher's copy of the server's idle per-thread connections, held (never closed)
NO_WORKER = -1          # the job handle of a request answered without a worker (no such pid: never running)
ANSWERED = (100, "answered at once (cached, or refused)")   # progress (value, label) of a request with no worker


def admitted_by(check: Callable, busy: Callable[[str], tuple]):
    """Mark a background callback (put this decorator below ``@app.callback``): ``check(*callback_args)`` runs in the
    server before any worker starts and returns None to start the job, or the callback's outputs (a refusal, a
    cached result) to answer with at once (its progress then reads :data:`ANSWERED`); ``busy(message)`` gives the
    outputs that say the queue is full."""
    def mark(fn):
        fn.admit, fn.busy = check, busy
        return fn
    return mark


def _take_slot(slots: Path, n_slots: int, cache, progress_key: str) -> int:
    """Block until one of ``n_slots`` slot locks is free and hold it for the life of this process (the kernel frees
    it when the process ends, killed or not); the job's progress says it is queued meanwhile."""
    announced = False
    while True:
        for i in range(n_slots):
            fd = os.open(slots / f"slot-{i}", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                os.close(fd)
        if not announced:
            cache.set(progress_key, [0, f"queued: {n_slots} job(s) running (max_jobs); starts when one ends"])
            announced = True
        time.sleep(0.2)


def _run_job(cache, job_fn, job_args, slots: Path, n_slots: int) -> None:
    """In a freshly forked worker: replace the cache's thread-local connection store, wait for a free slot, then run
    Dash's job function."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)   # the launcher ignores it; the job's own subprocesses must not
    _INHERITED.append(cache._local)
    cache._local = threading.local()
    _take_slot(slots, n_slots, cache, job_args[1])
    job_fn(*job_args)


def _launch_loop(cache, registry: dict, connection, server_end, slots: Path, n_slots: int) -> None:
    """The launcher: fork one worker per request ``(registry key, job args)`` and answer with its pid, until the
    server's end of the pipe closes (``stop_launcher``, or the server ended, killed or not). Its copy of that end,
    inherited by the fork, is closed first: while any copy is open the launcher never sees the end of the pipe and
    outlives the server. Finished workers are reaped by the kernel (SIGCHLD ignored), so a pid that is gone means the
    job ended, as Dash's ``job_running`` expects."""
    server_end.close()
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
                _run_job(cache, job_fn, job_args, slots, n_slots)
            except BaseException:  # noqa: BLE001 - Dash's job function stores its own errors; anything else is fatal
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        connection.send(("ok", pid))


class ForkSafeDiskcacheManager(DiskcacheManager):
    """DiskcacheManager whose workers are forked from a launcher that never held an SQLite lock, with admission,
    a bounded queue and abandoned-job reaping (module doc)."""

    def __init__(self, cache, *, max_jobs: int = 2, max_queued_jobs: int = 4, abandon_after_s: float = 30.0, **kwargs):
        if max_jobs < 1 or max_queued_jobs < 0 or abandon_after_s <= 0:
            raise ValueError("max_jobs must be >= 1, max_queued_jobs >= 0 and abandon_after_s > 0")
        self._admission: dict[str, tuple] = {}
        super().__init__(cache, **kwargs)
        self.max_jobs, self.max_queued_jobs, self.abandon_after_s = max_jobs, max_queued_jobs, abandon_after_s
        self._launcher = None
        self._pipe = None
        self._pipe_lock = threading.Lock()
        self._slots = Path(tempfile.mkdtemp(prefix="scfmx-job-slots-"))
        self._seen: dict[int, float] = {}      # worker pid -> when Dash last asked about it
        self._reaper_stop = threading.Event()

    def make_job_fn(self, fn, progress, key=None):
        """Dash registers every background callback here; keep its admission check (:func:`admitted_by`)."""
        if hasattr(fn, "admit"):
            self._admission[key] = (fn.admit, fn.busy)
        return super().make_job_fn(fn, progress, key)

    def terminate_job(self, job) -> None:
        """Dash's terminate, tolerating a worker that exits while it is being ended (Dash lists its children after
        checking it exists, and psutil raises NoSuchProcess when it finished in between: nothing is left to end)."""
        try:
            super().terminate_job(job)
        except psutil.NoSuchProcess:
            pass

    def start_launcher(self) -> None:
        """Fork the launcher now, and start the reaper of abandoned jobs. Call once, after every background callback
        is registered and before serving."""
        if self._launcher is not None:
            raise RuntimeError("the job launcher is already running")
        server_end, launcher_end = multiprocessing.Pipe()
        process = multiprocessing.get_context("fork").Process(
            target=_launch_loop,
            args=(self.handle, dict(self.func_registry), launcher_end, server_end, self._slots, self.max_jobs),
            name="dash-job-launcher", daemon=True)
        # Forked from a thread that has never run an OpenMP region: GNU OpenMP keeps its worker pool per thread,
        # and a child forked from a thread whose pool exists waits forever on the pool's (absent) threads at its
        # first parallel torch op (seen: a live ablation job idle in the attention forward).
        starter = threading.Thread(target=process.start, name="dash-job-launcher-start")
        starter.start()
        starter.join()
        launcher_end.close()
        self._launcher, self._pipe = process, server_end
        self._reaper_stop.clear()
        threading.Thread(target=self._reap_abandoned, name="dash-job-reaper", daemon=True).start()

    def stop_launcher(self) -> None:
        """Close the pipe (the launcher exits at EOF) and wait for it; stop the reaper; running workers are left to
        finish."""
        if self._launcher is None:
            return
        self._reaper_stop.set()
        self._pipe.close()
        self._launcher.join(10)
        self._launcher = self._pipe = None

    def _reap_abandoned(self) -> None:
        """Kill workers Dash has not asked about for ``abandon_after_s``; forget workers that ended."""
        while not self._reaper_stop.wait(min(1.0, self.abandon_after_s / 4)):
            now = time.monotonic()
            for pid, seen in list(self._seen.items()):
                if not DiskcacheManager.job_running(self, pid):
                    self._seen.pop(pid, None)
                elif now - seen > self.abandon_after_s:
                    log.warning("background job %d not polled for %.0f s (its page is gone): ending it", pid,
                                now - seen)
                    self.terminate_job(pid)
                    self._seen.pop(pid, None)

    def job_running(self, job):
        """Dash asks this on every poll of a running job: that is the job's heartbeat."""
        if job is not None and int(job) in self._seen:
            self._seen[int(job)] = time.monotonic()
        return super().job_running(job)

    def _answer(self, key: str, outputs) -> None:
        """Store a callback's outputs as its job's result, with the progress a finished answer shows."""
        self.handle.set(self._make_progress_key(key), list(ANSWERED))
        self.handle.set(key, outputs)

    def n_alive(self) -> int:
        """Workers started and not yet ended (running or queued)."""
        return sum(1 for pid in list(self._seen) if DiskcacheManager.job_running(self, pid))

    def call_job_fn(self, key, job_fn, args, context):
        if self._launcher is None:
            raise RuntimeError("background jobs need the launcher: call start_launcher() before serving requests")
        registry_key = next((k for k, fn in self.func_registry.items() if fn is job_fn), None)
        admit, busy = self._admission.get(registry_key, (None, None))
        if admit is not None:
            answer = admit(**args) if isinstance(args, dict) else admit(*args)
            if answer is not None:                 # refused or already known: no worker
                self._answer(key, answer)
                return NO_WORKER
        limit = self.max_jobs + self.max_queued_jobs
        with self._pipe_lock:   # counting and starting together: two requests at once cannot both take the last place
            full = self.n_alive() >= limit
            if not full:
                self._pipe.send((registry_key, (key, self._make_progress_key(key), args, context)))
                status, value = self._pipe.recv()
                if status == "ok":
                    self._seen[int(value)] = time.monotonic()
        if full:
            message = (f"Busy: {limit} background jobs are running or queued (max_jobs = {self.max_jobs}, "
                       f"max_queued_jobs = {self.max_queued_jobs}); try again when one ends, or cancel one.")
            if busy is None:
                raise RuntimeError(message)
            self._answer(key, busy(message))
            return NO_WORKER
        if status != "ok":
            raise RuntimeError(value)
        return value
