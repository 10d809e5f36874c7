"""Cached views: the server keeps the serialised answer of every callback that only reads the run, and answers the
same request again from memory, without running Dash's dispatch, the callback or plotly's serialisation
(20 clients on 2 cores queued behind per-request figure builds under one interpreter lock).

Which requests: ``POST /_dash-update-component`` without a query string (Dash's polls of a background job carry
``cacheKey``/``job``), whose callback is neither a background callback nor marked :func:`not_a_view` (downloads:
the figure export and the claims report render on a click, and an export's "busy, try again" depends on the moment).
The key is a hash of the request body, which holds every input and state value and the triggering input: two
requests with one key run the same callback on the same arguments.

What an answer rests on besides its arguments, each checked on every hit (a failed check recomputes it):

- the run directories under ``cache/artifacts``: a complete run never changes (precompute publishes it by rename),
  so the folder's own modification time changes exactly when a run is added or removed;
- results that background jobs write into the job cache (live ablations, CSSI levels computed in the app): pages
  read them through :class:`JobResults`, which notes each key a request reads with the key's version; a job's write
  gives the key a new version. A view that reads no job result is never recomputed because a job ended;
- the export tokens the answer hands out (:meth:`app.export.FigureExports.publish` notes them): each must still be
  in the job cache (diskcache culls entries past its size limit). An entry lives ``ttl_s``, less than a token's
  lifetime (the app refuses settings where it is not), so a token from a cached answer has at least the
  difference left to be exported.

Concurrent requests for one key that is not cached wait for the first one's answer instead of computing it again.
Entries are kept least-recently-used within ``max_bytes``. Answers say ``X-View-Cache: hit`` or ``miss``."""
from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import diskcache
from flask import Response, g, has_request_context, request

CALLBACK_PATH = "/_dash-update-component"
HEADER = "X-View-Cache"


def not_a_view(fn: Callable) -> Callable:
    """Mark a callback whose answer must not be cached (put this decorator below ``@app.callback``)."""
    fn.cached_view = False
    return fn


def _noted(name: str) -> list | None:
    """The list the current request keeps for ``name`` while it computes a cacheable view (else None)."""
    return g.get(name) if has_request_context() else None


def note_export(token: str) -> None:
    """An export token the view being computed hands out (its answer is valid only while the token exists)."""
    tokens = _noted("view_exports")
    if tokens is not None:
        tokens.append(token)


class JobResults:
    """The job cache as pages read and write results: ``get`` and ``set`` as diskcache's, plus a version per key
    (written after the value, read before it), noted for the view being computed so that its cached answer is
    recomputed once a job writes a key it read (module doc)."""

    def __init__(self, cache: diskcache.Cache):
        self.cache = cache

    @staticmethod
    def _version_key(key) -> tuple:
        return ("result-version", key)

    def version(self, key):
        """The key's current version (None: never written through this class)."""
        return self.cache.get(self._version_key(key))

    def get(self, key, default=None):
        reads = _noted("view_reads")
        if reads is not None:
            reads.append((key, self.version(key)))
        return self.cache.get(key, default)

    def set(self, key, value) -> None:
        self.cache.set(key, value)
        self.cache.set(self._version_key(key), f"{time.time_ns()}-{os.getpid()}-{threading.get_ident()}")


@dataclass(frozen=True)
class _Entry:
    status: int
    body: bytes
    mimetype: str
    artifacts_stamp: int
    reads: tuple        # ((job-cache key, version read), ...)
    exports: tuple      # export tokens handed out
    expires: float


class ViewCache:
    """Serialised answers of the app's views, in this server process's memory (module doc)."""

    def __init__(self, results: JobResults, artifacts_dir: Path, *, max_bytes: int, ttl_s: float,
                 wait_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.results, self.artifacts_dir = results, Path(artifacts_dir)
        self.max_bytes, self.ttl_s, self.wait_s, self.clock = max_bytes, ttl_s, wait_s, clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._computing: dict[str, threading.Event] = {}
        self._app = None

    @property
    def nbytes(self) -> int:
        """Bytes of the answers kept."""
        return self._bytes

    def install(self, app) -> None:
        """Serve ``app``'s views through the cache: call after the hooks that must run first (the server-time clock,
        the Host check); the callbacks are looked up in ``app.callback_map`` when requested."""
        self._app = app
        app.server.before_request(self._answer_cached)
        app.server.after_request(self._keep)
        app.server.teardown_request(self._release_pending)

    # -- what may be cached, and whether an entry still holds ---------------------------------------------------

    def cacheable(self, output: str | None) -> bool:
        """A registered callback that is neither a background job nor marked :func:`not_a_view`."""
        spec = self._app.callback_map.get(output) if isinstance(output, str) and self._app is not None else None
        return (spec is not None and not spec.get("background")
                and getattr(spec.get("callback"), "cached_view", True) is not False)

    def _artifacts_stamp(self) -> int:
        try:
            return os.stat(self.artifacts_dir).st_mtime_ns
        except FileNotFoundError:
            return -1

    def _holds(self, entry: _Entry) -> bool:
        return (entry.expires > self.clock() and entry.artifacts_stamp == self._artifacts_stamp()
                and all(self.results.version(key) == version for key, version in entry.reads)
                and all(("export", token) in self.results.cache for token in entry.exports))

    def _lookup(self, key: str) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is None:
            return None
        if self._holds(entry):
            return entry
        self._drop(key, entry)
        return None

    def _drop(self, key: str, entry: _Entry) -> None:
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]
                self._bytes -= len(entry.body)

    def _store(self, key: str, entry: _Entry) -> None:
        if len(entry.body) > self.max_bytes // 8:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old.body)
            self._entries[key] = entry
            self._bytes += len(entry.body)
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted.body)

    # -- the request hooks ----------------------------------------------------------------------------------------

    def _answer_cached(self):
        """Before Dash: answer a cached view, or let this request compute it (and note what it reads)."""
        if request.method != "POST" or not request.path.endswith(CALLBACK_PATH) or request.query_string:
            return None
        key = hashlib.blake2b(request.get_data(cache=True), digest_size=20).hexdigest()
        checked = False
        while True:
            entry = self._lookup(key)
            if entry is not None:
                g.view_cache = "hit"
                return Response(entry.body, status=entry.status, mimetype=entry.mimetype)
            if not checked:
                payload = request.get_json(silent=True)
                if not (isinstance(payload, dict) and self.cacheable(payload.get("output"))):
                    return None
                checked = True
            with self._lock:
                pending = self._computing.get(key)
                if pending is None:
                    self._computing[key] = threading.Event()
                    break
            if not pending.wait(self.wait_s):   # the first request is stuck: compute this one alone, uncached
                return None
        g.view_key, g.view_cache, g.view_stamp = key, "miss", self._artifacts_stamp()
        g.view_reads, g.view_exports = [], []
        return None

    def _keep(self, response: Response) -> Response:
        """After Dash: keep a computed view's answer; mark cacheable answers hit or miss."""
        state = g.get("view_cache")
        if state is not None:
            response.headers[HEADER] = state
        key = g.get("view_key")
        if key is not None:
            if response.status_code in (200, 204) and not response.direct_passthrough and not response.is_streamed:
                self._store(key, _Entry(response.status_code, response.get_data(), response.mimetype or "",
                                        g.view_stamp, tuple(g.view_reads), tuple(g.view_exports),
                                        self.clock() + self.ttl_s))
            self._release(key)
        return response

    def _release(self, key: str) -> None:
        g.view_key = None
        with self._lock:
            pending = self._computing.pop(key, None)
        if pending is not None:
            pending.set()

    def _release_pending(self, _exc) -> None:
        """A request that failed before its answer was kept still wakes those waiting for it."""
        key = g.get("view_key")
        if key is not None:
            self._release(key)
