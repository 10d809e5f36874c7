"""Runs on disk: ``cache/artifacts/<run_id>/`` of plain files plus ``manifest.json`` (DESIGN.md section 6).

A run is built in ``<run_id>.partial/``; each finished stage records the hash of its inputs in
``stages/<stage>.json`` so a killed precompute resumes where it stopped. The manifest (config and hash,
package versions, input sha256s, seeds, every file with its sha256; :class:`analysis.io.manifest.RunManifest`) is
validated, written last, atomically, and the directory is then renamed to ``<run_id>/``: a directory without
``.partial`` is a complete run. File names are declared once in :mod:`analysis.io.files`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from importlib import metadata
import re
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import SchemaError
from . import files, schemas
from .files import MANIFEST
from .manifest import RunManifest

log = logging.getLogger(__name__)
PARTIAL = ".partial"
RUN_ID = re.compile(r"^[A-Za-z0-9_.-]+$")   # a run directory's name: what precompute writes, what the app opens
PACKAGES = ("torch", "transformers", "numpy", "scipy", "pandas", "anndata", "scikit-learn", "statsmodels")


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


class RunWriter:
    """Builds one run directory; see module doc for the resume and completion protocol."""

    def __init__(self, cache_root: Path, run_id: str):
        self.run_id = run_id
        self.final = Path(cache_root) / "artifacts" / run_id
        self.dir = self.final.with_name(run_id + PARTIAL)
        self.timings: list[dict] = []
        self.peak_memory = None       # set by the pipeline: () -> peak resident bytes since the last call

    def open(self) -> "RunWriter":
        (self.dir / "stages").mkdir(parents=True, exist_ok=True)
        return self

    def is_done(self, stage: str, key: str) -> bool:
        marker = self.dir / "stages" / f"{stage}.json"
        return marker.is_file() and json.loads(marker.read_text()).get("key") == key

    def mark_done(self, stage: str, key: str, seconds: float, skipped: bool = False) -> None:
        """Record a finished (or skipped) stage: its time and, when :attr:`peak_memory` is set (a callable returning
        the resident peak in bytes since its last call), the peak it reached."""
        peak = self.peak_memory() if self.peak_memory is not None else None
        self.timings.append({"stage": stage, "seconds": round(seconds, 3), "skipped": skipped,
                             "peak_rss_gib": None if peak is None else round(peak / 2 ** 30, 3)})
        if not skipped:
            write_json_atomic(self.dir / "stages" / f"{stage}.json", {"key": key, "seconds": seconds,
                                                                     "finished": time.time()})

    def write_table(self, name: str, frame: pd.DataFrame) -> None:
        """Validate tidy table ``name`` against its schema and write it. A frame with no columns is an analysis that
        could not run on this data (one perturbation, no reference pair in the panel): nothing is written, so the
        app's ``has_table`` says so."""
        if len(frame.columns):
            schemas.validate(name, frame).to_parquet(self.dir / files.table(name), index=False)

    def finish(self, manifest: dict) -> Path:
        """Hash every file, write the manifest last (checked to parse as a :class:`RunManifest`), and publish the
        directory as a complete run."""
        files = {}
        for p in sorted(self.dir.rglob("*")):
            if p.is_file() and p.parent.name != "stages" and p.name != MANIFEST:
                files[str(p.relative_to(self.dir))] = {"sha256": sha256_path(p), "bytes": p.stat().st_size}
        manifest = {**manifest, "run_id": self.run_id, "files": files, "stage_timings": self.timings,
                    "versions": package_versions(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        RunManifest.from_dict(json.loads(json.dumps(manifest, default=str)))
        write_json_atomic(self.dir / MANIFEST, manifest)
        if self.final.exists():
            shutil.rmtree(self.final)
        self.dir.rename(self.final)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def read_manifest(run_dir: Path) -> RunManifest:
    """The typed manifest of a complete run directory (:class:`SchemaError` when missing or unreadable)."""
    path = Path(run_dir) / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path} is unreadable ({type(exc).__name__}: {exc})") from exc
    return RunManifest.from_dict(raw)


def links_inside(run_dir: Path) -> list[str]:
    """Paths (relative to ``run_dir``) of the symbolic links anywhere inside a run directory. A run writes only
    regular files; a link planted there would have a reader open whatever it points at (``/etc/passwd`` as the
    manifest), so a run holding one is not opened."""
    return sorted(str(p.relative_to(run_dir)) for p in Path(run_dir).rglob("*") if p.is_symlink())


def scan_runs(cache_root: Path) -> tuple[list[RunManifest], list[str]]:
    """Complete runs under ``cache_root/artifacts`` (newest first) and one line per directory that looks like a run
    but cannot be opened (a symlink or one holding symlinks, an unreadable or old-format manifest), so a reader can
    say what it skipped."""
    root = Path(cache_root) / "artifacts"
    runs, skipped = [], []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.name.endswith(PARTIAL) or not (d / MANIFEST).is_file():
                continue
            if d.is_symlink() or not d.is_dir():
                skipped.append(f"{d.name}: not a plain run directory (symlink)")
                continue
            if not RUN_ID.match(d.name):
                skipped.append(f"{d.name!r}: not a run id (letters, digits, '_', '.' and '-'); rename or remove it")
                continue
            if links := links_inside(d):
                skipped.append(f"{d.name}: holds symbolic links ({', '.join(links[:3])}); a run holds only regular "
                               "files: remove the links or precompute the run again")
                continue
            try:
                manifest = read_manifest(d)
            except SchemaError as exc:
                log.warning("skipping run %s: %s", d.name, exc)
                skipped.append(f"{d.name}: {exc}")
                continue
            if manifest.run_id != d.name:
                skipped.append(f"{d.name}: its manifest names run {manifest.run_id!r}; a run is opened by the name "
                               "its manifest gives it (rename the directory back)")
                continue
            runs.append(manifest)
    return sorted(runs, key=lambda m: m.finished, reverse=True), skipped
