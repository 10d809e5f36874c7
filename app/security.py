"""Request guards of the Flask server under the Dash app.

DNS rebinding: a page on another site can make the browser resolve its own name to 127.0.0.1 and then talk to the
explorer as a same-origin page. The request still carries the attacker's name in its ``Host`` header, so every
request whose Host is not one of the names the server was started for is refused (421 Misdirected Request)."""
from __future__ import annotations

from flask import Flask, Response, request


def refuse_foreign_hosts(server: Flask, allowed: frozenset[str]) -> None:
    """Refuse every request whose ``Host`` header (lower-cased, with or without the port) is not in ``allowed``."""

    @server.before_request
    def _host_guard():
        host = (request.host or "").lower()
        if host not in allowed:
            return Response(f"Host {host!r} is not served here; start the app with --allow-host {host.split(':')[0]} "
                            f"to serve it.\n", status=421, mimetype="text/plain")
        return None
