"""The app's job cache (background-job results and progress, figures waiting for export, cached views): a
diskcache whose keys and values are JSON, so nothing read back from it can run code.

diskcache's default ``Disk`` pickles every value that is not a number, string or bytes, and unpickling runs whatever
the pickle names: a value planted in the cache directory by anyone who can write there ran in the server when a page
opened. Here every key and value is written as zlib-compressed JSON (diskcache's ``JSONDisk``) through plotly's
encoder, which also writes figures and numpy values; they are read back as plain JSON (dicts, lists, numbers,
strings), which Dash takes as outputs as it takes the objects they came from. Tuples come back as lists. An entry
the cache's database marks as a pickle (or a key as not raw bytes), which this app never writes, is refused with
:class:`UntrustedEntry` before it is read: the mode is a column of the database, which whoever planted a value can
set too.

The cache lives in ``<cache>/jobs-json``; an older ``<cache>/diskcache`` (pickles) is never opened.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, UNKNOWN
from plotly.utils import PlotlyJSONEncoder

DIRECTORY = "jobs-json"


def _encode(obj) -> bytes:
    return json.dumps(obj, cls=PlotlyJSONEncoder).encode("utf-8")


class UntrustedEntry(ValueError):
    """An entry of the job cache that this app did not write (module doc)."""


class PlainJSONDisk(diskcache.JSONDisk):
    """``JSONDisk`` with plotly's JSON encoder (figures, numpy arrays and scalars, dates), so Dash's callback outputs
    store as they are; reading is ``JSONDisk``'s (``json.loads``: data only), for raw and binary entries only."""

    def put(self, key):
        return diskcache.Disk.put(self, zlib.compress(_encode(key), self.compress_level))

    def store(self, value, read, key=UNKNOWN):
        if not read:
            value = zlib.compress(_encode(value), self.compress_level)
        return diskcache.Disk.store(self, value, read, key=key)

    def get(self, key, raw):
        if not raw:
            raise UntrustedEntry(f"a key in {self._directory} is stored as a pickle, which this app never writes; "
                                 "delete that directory (it holds only job results and figures waiting for export)")
        return super().get(key, raw)

    def fetch(self, mode, filename, value, read):
        if mode not in (MODE_RAW, MODE_BINARY):
            raise UntrustedEntry(f"an entry in {self._directory} is stored in diskcache mode {mode} (a pickle or "
                                 "text), which this app never writes; delete that directory (it holds only job "
                                 "results and figures waiting for export)")
        return super().fetch(mode, filename, value, read)


def open_job_cache(cache_dir: str | Path, size_limit: int | None = None) -> diskcache.Cache:
    """The job cache under ``cache_dir`` (module doc); ``size_limit`` bytes (None: diskcache's default)."""
    settings = {} if size_limit is None else {"size_limit": size_limit}
    return diskcache.Cache(str(Path(cache_dir) / DIRECTORY), disk=PlainJSONDisk, **settings)
