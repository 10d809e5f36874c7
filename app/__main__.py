"""`python -m app [--host H] [--port P] [--cache DIR] [--run RUN_ID] [--allow-host NAME]` serves the explorer (127.0.0.1:8050)."""
from __future__ import annotations

import argparse

from .main import create_app
from .settings import AppSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", help="bind address (default 127.0.0.1, or $HOST)")
    ap.add_argument("--port", type=int, help="port (default 8050, or $PORT)")
    ap.add_argument("--cache", dest="cache_dir", help="cache directory holding artifacts/")
    ap.add_argument("--run", dest="run_id", help="run id to open first")
    ap.add_argument("--allow-host", dest="allow_hosts", action="append",
                    help="a Host name to serve besides loopback and the bind address (repeatable), e.g. when "
                         "behind a proxy; other Host headers are refused (DNS rebinding)")
    ap.add_argument("--max-jobs", type=int, help="background jobs computing at once (default 2)")
    ap.add_argument("--max-queued-jobs", type=int, help="jobs that may wait for a free worker (default 4)")
    ap.add_argument("--view-cache-mib", type=int, help="memory for the answers of views already drawn, served again "
                                                      "without recomputing (default 256; 0: none)")
    args = ap.parse_args()
    settings = AppSettings.from_env(**vars(args))
    create_app(settings).run(host=settings.host, port=settings.port, debug=settings.debug)


if __name__ == "__main__":
    main()
