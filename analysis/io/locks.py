"""Advisory file locks in the cache (``cache/locks/<name>.lock``), so that two precomputes writing the same thing (the
embedded dataset or model, or one run) take turns: the second waits, then finds the first one's result and reuses it
instead of rewriting it under the first one's feet."""
from __future__ import annotations

import fcntl
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger("precompute")


@contextmanager
def exclusive(cache: Path, name: str, what: str) -> Iterator[bool]:
    """Hold the lock ``name`` for the block; yields True when another process held it first (this one waited, so
    whatever that process wrote is now there to reuse). ``what`` names the work in the waiting message. The lock is
    released when the block ends or the process dies."""
    directory = Path(cache) / "locks"
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            log.info("another precompute is writing %s; waiting for it to finish", what)
            fcntl.flock(fd, fcntl.LOCK_EX)
            waited = True
        yield waited
    finally:
        os.close(fd)   # closing the descriptor releases the lock
