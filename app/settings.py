"""AppSettings: where the cache is, which run opens first, where to bind, and the limits the UI enforces."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from analysis.config import default_cache_dir

PROJECT_ROOT = Path(__file__).resolve().parents[1]     # the checkout, or site-packages when installed


@dataclass(frozen=True)
class AppSettings:
    cache_dir: Path = field(default_factory=default_cache_dir)
    run_id: str | None = None
    host: str = "127.0.0.1"
    port: int = 8050
    max_genes_drawn: int = 60
    top_edges: int = 50
    max_cells_drawn: int = 20_000  # cells sent to the browser in an embedding scatter
    diskcache_size_limit: int = 2 * 1024 ** 3  # bytes; diskcache's default silently evicts past 1 GiB
    max_custom_control_cells: int = 200_000
    max_live_cells: int = 500
    live_baseline_gib: float = 4.0  # a live ablation's unablated pass is kept (cache/live/<run>) up to this size
    max_jobs: int = 2               # background jobs computing at once (app.jobs)
    max_queued_jobs: int = 4        # more that may wait for a free worker; beyond that a request is answered "busy"
    abandon_after_s: float = 30.0   # a job its page stopped polling for this long is ended
    export_max_points: int = 1_000_000  # data values one exported figure may draw (CSV is not bounded)
    view_cache_mib: int = 256       # answers of the views kept in the server's memory (app.view_cache); 0: none
    view_cache_ttl_s: float = 3600.0  # how long one is kept; under an export token's lifetime (app.export)
    max_request_mib: int = 32      # a request body larger than this is refused (413) before it is read
    allow_hosts: tuple[str, ...] = ()  # Host names served besides loopback and the bind address (DNS rebinding)
    debug: bool = False

    def allowed_hosts(self) -> frozenset[str]:
        """Host headers the server answers: loopback names, the bind address (and this machine's names when it
        binds every interface), and ``allow_hosts``; each bare and with the port."""
        names = {"127.0.0.1", "localhost", "[::1]", self.host.lower(), *(h.lower() for h in self.allow_hosts)}
        if self.host in ("0.0.0.0", "::"):
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        return frozenset(n for name in names for n in (name, f"{name}:{self.port}"))

    @classmethod
    def from_env(cls, **overrides) -> "AppSettings":
        """Dash's ``HOST``/``PORT`` environment variables, then explicit overrides (CLI flags)."""
        base = {"host": os.environ.get("HOST", cls.host), "port": int(os.environ.get("PORT", cls.port))}
        base.update({k: v for k, v in overrides.items() if v is not None})
        if base.get("allow_hosts") is not None:
            base["allow_hosts"] = tuple(base["allow_hosts"])
        if "cache_dir" in base:
            base["cache_dir"] = Path(base["cache_dir"])
        return cls(**base)
