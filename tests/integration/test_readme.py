"""The README's notebook snippet runs as written on a cache laid out as the first command leaves it (the embedded
default at test size, as ``cache/`` of the working directory), and prints the verdicts analysis.scoring.verdicts
computes for the run it picks; docs/notebook.md runs as written; every link of the README and docs/ opens a file of the
repository."""
from __future__ import annotations

import contextlib
import io
import os
import re

from tests.conftest import ROOT


def test_the_notebook_snippet_runs_on_a_real_cache(embedded_cache, tmp_path):
    cache, runs = embedded_cache
    snippet = re.search(r"## In a notebook.*?```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    (tmp_path / "cache").symlink_to(cache, target_is_directory=True)
    out, here = io.StringIO(), os.getcwd()
    try:
        os.chdir(tmp_path)
        with contextlib.redirect_stdout(out):
            exec(compile(snippet, "README.md", "exec"), {})
    finally:
        os.chdir(here)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("The evidence here") and len(lines) == 7
    assert all(re.match(r"\[(for|against|open|untestable)\] ", line) for line in lines[1:])


def test_every_link_of_the_readme_and_docs_opens_a_file_of_the_repository():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "#")):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(ROOT) and path.exists(), f"{page.name} links {target}"


def test_the_notebook_walkthrough_runs_as_written(embedded_cache, tmp_path):
    cache, runs = embedded_cache
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "notebook.md").read_text(), re.S)
    (tmp_path / "cache").symlink_to(cache, target_is_directory=True)
    out, here, scope = io.StringIO(), os.getcwd(), {}
    try:
        os.chdir(tmp_path)
        with contextlib.redirect_stdout(out):
            for block in blocks:
                exec(compile(block, "docs/notebook.md", "exec"), scope)
    finally:
        os.chdir(here)
    lines = out.getvalue().splitlines()
    newest = sorted(runs.values(), key=lambda d: d.name)
    assert lines[0].split()[0] in {d.name for d in newest} and "layers x" in lines[0]
    assert sum(bool(re.match(r"\[(for|against|open|untestable)\] ", line)) for line in lines) == 6  # six verdicts
    assert any(line.startswith("heads: [") for line in lines)
    assert "['source', 'target', 'weight', 'n_cells', 'references', 'mode']" in out.getvalue()
    assert "Ablation dose-response: change in mlm loss" in lines[-1]
    assert (tmp_path / "readout_layer.graphml").is_file() and (tmp_path / "dose_response.html").is_file()
