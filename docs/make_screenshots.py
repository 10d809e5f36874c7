"""Remake the README's and docs' screenshots from a real cache: serve the app on it (its first run, or ``--run``),
open pages in headless Chromium (Debian's chromium + chromium-driver) at 1400 px and save PNGs into docs/.

    .venv/bin/python precompute.py && .venv/bin/python docs/make_screenshots.py --cache cache
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser.conftest import headless_chromium, serve_app  # noqa: E402

# file -> (page path, CSS selector of the element to capture, selector that must be present first, window height)
SHOTS = {"verdict-panel.png": ("/", "#overview-verdicts", "#overview-verdicts li.verdict", 1100),
         "overview.png": ("/", "body", "#overview-verdicts li.verdict", 1100),
         "ablation.png": ("/ablation", "body", "#ablation-bottom-line .verdict-sentence", 1500),
         "features.png": ("/features", "body", "#features-note", 1100)}


def main(argv: list[str] | None = None) -> int:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--cache", type=Path, default=ROOT / "cache")
    args.add_argument("--run", help="run id (default: the cache's newest geneformer run)")
    opts = args.parse_args(argv)
    run = opts.run or sorted((opts.cache / "artifacts").glob("*-geneformer-*"))[-1].name
    server, url = serve_app(opts.cache, run)
    work = Path(__import__("tempfile").mkdtemp())
    driver = headless_chromium(work)
    try:
        for name, (path, target, ready, height) in SHOTS.items():
            driver.set_window_size(1400, height)
            driver.get(f"{url}{path}?run={run}")
            WebDriverWait(driver, 120).until(lambda d, r=ready: d.find_elements(By.CSS_SELECTOR, r))
            time.sleep(3)                                  # figures finish drawing
            element = driver.find_element(By.CSS_SELECTOR, target)
            (ROOT / "docs" / name).write_bytes(element.screenshot_as_png)
            print(f"docs/{name}: {path} of run {run}")
    finally:
        driver.quit()
        server.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
