"""Runs on disk: ``cache/artifacts/<run_id>/`` of plain files plus ``manifest.json`` (DESIGN.md section 6).

A run is built in ``<run_id>.partial/``; each finished stage records the hash of its inputs in
``stages/<stage>.json`` so a killed precompute resumes where it stopped. The manifest (config and hash,
package versions, input sha256s, seeds, every file with its sha256) is written last, atomically, and the
directory is then renamed to ``<run_id>/``: a directory without ``.partial`` is a complete run.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
PARTIAL = ".partial"
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

    def open(self) -> "RunWriter":
        (self.dir / "stages").mkdir(parents=True, exist_ok=True)
        return self

    def is_done(self, stage: str, key: str) -> bool:
        marker = self.dir / "stages" / f"{stage}.json"
        return marker.is_file() and json.loads(marker.read_text()).get("key") == key

    def mark_done(self, stage: str, key: str, seconds: float, skipped: bool = False) -> None:
        self.timings.append({"stage": stage, "seconds": round(seconds, 3), "skipped": skipped})
        if not skipped:
            write_json_atomic(self.dir / "stages" / f"{stage}.json", {"key": key, "seconds": seconds,
                                                                     "finished": time.time()})

    def finish(self, manifest: dict) -> Path:
        """Hash every file, write the manifest last, and publish the directory as a complete run."""
        files = {}
        for p in sorted(self.dir.rglob("*")):
            if p.is_file() and p.parent.name != "stages" and p.name != MANIFEST:
                files[str(p.relative_to(self.dir))] = {"sha256": sha256_path(p), "bytes": p.stat().st_size}
        manifest = {**manifest, "run_id": self.run_id, "files": files, "stage_timings": self.timings,
                    "versions": package_versions(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json_atomic(self.dir / MANIFEST, manifest)
        if self.final.exists():
            shutil.rmtree(self.final)
        self.dir.rename(self.final)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def list_runs(cache_root: Path) -> list[dict]:
    """Manifests of complete runs under ``cache_root/artifacts``, newest first."""
    root = Path(cache_root) / "artifacts"
    runs = []
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir() and not d.name.endswith(PARTIAL) and (d / MANIFEST).is_file():
                runs.append(json.loads((d / MANIFEST).read_text()))
    return sorted(runs, key=lambda m: m.get("finished", ""), reverse=True)


def read_manifest(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / MANIFEST).read_text())
