"""Timed stage messages for precompute's log (DESIGN.md section 9.7), and the seconds a piece of work takes (the plan's
probes)."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager

log = logging.getLogger("precompute")


@contextmanager
def timed(name: str):
    t0 = time.perf_counter()
    log.info("[%s] start", name)
    yield
    log.info("[%s] done in %.2fs", name, time.perf_counter() - t0)


def seconds_of(work) -> float:
    """Seconds ``work()`` takes (wall clock)."""
    t0 = time.perf_counter()
    work()
    return time.perf_counter() - t0
