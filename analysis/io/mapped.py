"""Memory-mapped ``.npy`` arrays whose pages can be handed back once read.

A read-only mapping's pages stay in the process's resident set after they are read, so a stage that scans a store
on disk (every perturbed gene's row of every head, every layer's source rows) would end holding the whole file as
resident memory although it needs one block at a time. :func:`release` drops the pages of given arrays from this
process (``madvise(MADV_DONTNEED)``; a clean file page is re-read from the page cache or the disk when touched
again, nothing is lost), and :func:`release_all` those of every array :func:`load` mapped that is still alive.
"""
from __future__ import annotations

import mmap
import weakref
from pathlib import Path

import numpy as np

_LOADED: "weakref.WeakSet[mmap.mmap]" = weakref.WeakSet()


def load(path: Path) -> np.ndarray:
    """``np.load(path, mmap_mode="r")``, remembered for :func:`release_all` (a zero-size array maps nothing)."""
    array = np.load(path, mmap_mode="r")
    if getattr(array, "_mmap", None) is not None:
        _LOADED.add(array._mmap)
    return array


def release(*arrays) -> None:
    """Drop the resident pages of each memory-mapped array among ``arrays`` (the whole file each maps; views of
    one map share it); other arrays are left alone."""
    for array in arrays:
        mapping = getattr(array, "_mmap", None)
        if mapping is not None and not mapping.closed:
            mapping.madvise(mmap.MADV_DONTNEED)


def release_all() -> None:
    """:func:`release` every array :func:`load` mapped that is still referenced."""
    for mapping in list(_LOADED):
        if not mapping.closed:
            mapping.madvise(mmap.MADV_DONTNEED)
