"""Every response carries the server's own time in a Server-Timing header (app.timing), measured from the first
request hook, so a slow view is told apart from a slow network or browser."""
from __future__ import annotations

import re
import time

from flask import Flask

from app.timing import report_server_time


def test_server_timing_header_measures_the_view():
    server = Flask(__name__)
    report_server_time(server)

    @server.route("/slow")
    def slow():
        time.sleep(0.05)
        return "done"

    @server.route("/fast")
    def fast():
        return "done"

    client = server.test_client()
    durations = {}
    for path in ("/slow", "/fast"):
        header = client.get(path).headers["Server-Timing"]
        match = re.fullmatch(r"app;dur=(\d+\.\d+)", header)
        assert match, header
        durations[path] = float(match.group(1))
    assert durations["/slow"] >= 50   # the view's sleep is inside what is timed
    assert client.get("/missing").headers["Server-Timing"].startswith("app;dur=")   # errors are timed too
