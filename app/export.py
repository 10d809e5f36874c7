"""Figure export: PNG, SVG and PDF through kaleido (which drives the local Chromium, offline), standalone HTML
with plotly.js embedded, the figure's data as CSV, and a ZIP bundle of all of them plus the run manifest."""
from __future__ import annotations

import io
import json
import zipfile

import pandas as pd
import plotly.graph_objects as go

FORMATS = ("png", "svg", "pdf", "html", "csv", "zip")
MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf", "html": "text/html",
        "csv": "text/csv", "zip": "application/zip"}


def figure_bytes(fig: go.Figure, fmt: str) -> bytes:
    if fmt in ("png", "svg", "pdf"):
        return fig.to_image(format=fmt, scale=2 if fmt == "png" else 1)
    if fmt == "html":
        return fig.to_html(include_plotlyjs=True, full_html=True).encode()
    raise ValueError(f"not a figure format: {fmt}")


def export_bytes(fig: go.Figure, data: pd.DataFrame, manifest: dict, name: str, fmt: str) -> tuple[str, bytes]:
    """(file name, content) of one export of figure ``name``."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "csv":
        return f"{name}.csv", data.to_csv(index=False).encode()
    if fmt != "zip":
        return f"{name}.{fmt}", figure_bytes(fig, fmt)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in ("png", "svg", "pdf", "html"):
            zf.writestr(f"{name}.{f}", figure_bytes(fig, f))
        zf.writestr(f"{name}.csv", data.to_csv(index=False))
        zf.writestr("manifest.json", json.dumps(manifest, indent=1, default=str))
    return f"{name}.zip", buf.getvalue()
