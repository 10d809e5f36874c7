"""Server time of every request, in the standard ``Server-Timing`` response header (``app;dur=<milliseconds>``):
the browser's developer tools show it next to each callback, and the app's load test
(``tests/benchmarks/app_load.py``) reads it to tell the server's time from the network's and the client's."""
from __future__ import annotations

import time

from flask import Flask, g


def report_server_time(server: Flask) -> None:
    """Add ``Server-Timing: app;dur=...`` to every response: milliseconds from the first request hook to the
    response (Dash's callback, serialisation and every other hook included; register this before the others)."""

    @server.before_request
    def _start_clock():
        g.server_timing_start = time.perf_counter()

    @server.after_request
    def _stamp(response):
        start = g.get("server_timing_start")
        if start is not None:
            response.headers["Server-Timing"] = f"app;dur={1000 * (time.perf_counter() - start):.2f}"
        return response
