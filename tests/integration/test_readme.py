"""The README's notebook snippet runs as written on a cache laid out as the first command leaves it (the embedded
default at test size, as ``cache/`` of the working directory), and prints the verdicts analysis.scoring.verdicts
computes for the run it picks; every link of the README and docs/ opens a file of the repository."""
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
