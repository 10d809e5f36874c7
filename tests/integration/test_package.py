"""The project installs as a package (pyproject.toml): a wheel built from the checkout holds the library, the app, its
assets and precompute; installed on its own (no checkout around it), both console commands run, the app finds its
assets, and the default cache is cache/ of the working directory, not of site-packages."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

from tests.conftest import ROOT

SOURCES = ("analysis", "app", "assets", "precompute.py", "pyproject.toml", "README.md")


def test_the_wheel_installs_both_commands_and_the_app_finds_its_assets(tmp_path):
    src = tmp_path / "src"
    for name in SOURCES:                                       # a copy: building writes build/ beside the sources
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                        if (ROOT / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"precompute.py", "assets/app.css", "assets/explorer.js", "app/main.py",
            "analysis/scoring/networks.py"} <= names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, timeout=600)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    for command in ("scfm-precompute", "scfm-explorer"):
        done = subprocess.run([sys.executable, str(site / "bin" / command), "--help"], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-2000:]
    probe = ("from analysis.config import default_cache_dir; from app.settings import PROJECT_ROOT, AppSettings; "
             "print(default_cache_dir()); print(AppSettings().cache_dir); "
             "print((PROJECT_ROOT / 'assets' / 'app.css').is_file())")
    lines = subprocess.run([sys.executable, "-c", probe], cwd=work, env=env, capture_output=True, text=True,
                           check=True, timeout=300).stdout.split()
    assert lines == [str(work / "cache"), str(work / "cache"), "True"]
