"""AppSettings: where the cache is, which run opens first, where to bind, and the limits the UI enforces."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class AppSettings:
    cache_dir: Path = PROJECT_ROOT / "cache"
    run_id: str | None = None
    host: str = "127.0.0.1"
    port: int = 8050
    max_genes_drawn: int = 60
    top_edges: int = 50
    max_cells_drawn: int = 20_000  # cells sent to the browser in an embedding scatter
    diskcache_size_limit: int = 2 * 1024 ** 3  # bytes; diskcache's default silently evicts past 1 GiB
    max_custom_control_cells: int = 200_000
    max_live_cells: int = 500
    debug: bool = False

    @classmethod
    def from_env(cls, **overrides) -> "AppSettings":
        """Dash's ``HOST``/``PORT`` environment variables, then explicit overrides (CLI flags)."""
        base = {"host": os.environ.get("HOST", cls.host), "port": int(os.environ.get("PORT", cls.port))}
        base.update({k: v for k, v in overrides.items() if v is not None})
        if "cache_dir" in base:
            base["cache_dir"] = Path(base["cache_dir"])
        return cls(**base)
