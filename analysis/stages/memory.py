"""This process's resident memory, as the plan and the stages meet it: the limit it may use (:func:`memory_limit`),
each stage's own peak (:class:`PeakRSS`), freed memory handed back between stages (:func:`release_free_memory`),
and the garbage collector kept to what a run makes (:func:`collector_on_run_objects`)."""
from __future__ import annotations

import ctypes
import gc
import threading
from contextlib import contextmanager
from pathlib import Path

import psutil

from ..io import mapped


def release_free_memory() -> None:
    """Hand the memory this process freed back to the system: collect garbage, ask glibc's allocator to return its
    free pages (``malloc_trim``; arrays under its 32 MB mmap threshold live in the heap, whose freed pages it
    otherwise keeps), and drop the pages read from memory-mapped stores (:func:`analysis.io.mapped.release_all`).
    Between stages, so one stage's temporaries and reads do not stay resident under the next."""
    gc.collect()
    mapped.release_all()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):      # not glibc: nothing to ask
        pass


@contextmanager
def collector_on_run_objects():
    """Within the block, the cyclic garbage collector looks only at objects made inside it: what exists on entry
    (after one collection) is frozen (``gc.freeze``), and unfrozen on exit so that it can be collected again. The
    imports alone leave some 350,000 tracked objects (modules, classes, functions) that every full collection
    walked: 0.13-0.25 s each on this machine, between every two stages (:func:`release_free_memory`) and whenever
    the collector ran by itself."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class PeakRSS:
    """The largest resident set size of this process while the block runs, sampled every ``interval`` seconds in a
    thread (``peak`` in bytes, after the block; :meth:`take` returns it, releases freed memory
    (:func:`release_free_memory`) and starts a new window, so one sampler gives each stage its own peak)."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._process = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def take(self) -> int:
        """The peak since the last call (or the start), then a new window from the current resident size."""
        peak = max(self.peak, self._process.memory_info().rss)
        release_free_memory()
        self.peak = self._process.memory_info().rss
        return peak

    def __enter__(self) -> "PeakRSS":
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def memory_limit() -> int:
    """Bytes this process may use: the machine's memory, or its cgroup's limit when that is lower (cgroup v2
    ``memory.max``, v1 ``memory.limit_in_bytes``)."""
    limit = psutil.virtual_memory().total
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = min(limit, int(text))
    return limit
