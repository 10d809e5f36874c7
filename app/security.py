"""Request guards of the Flask server under the Dash app.

DNS rebinding: a page on another site can make the browser resolve its own name to 127.0.0.1 and then talk to the
explorer as a same-origin page. The request still carries the attacker's name in its ``Host`` header, so every
request whose Host is not one of the names the server was started for is refused (421 Misdirected Request).

Request size: Werkzeug reads a body of any size (a 200 MB callback request was accepted and parsed); the server
takes at most the configured size and answers a larger one 413 before reading it (:func:`bound_request_size`)."""
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


def bound_request_size(server: Flask, max_bytes: int) -> None:
    """Refuse (413 Request Entity Too Large) every request whose body is over ``max_bytes`` (Flask's
    ``MAX_CONTENT_LENGTH``: a declared length over it is refused before the body is read, an undeclared one when
    the read passes it)."""
    server.config["MAX_CONTENT_LENGTH"] = int(max_bytes)
