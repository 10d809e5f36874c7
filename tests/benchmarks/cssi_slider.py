"""CSSI slider response times in a real headless Chromium, against serving the same level from scratch.

Serves the app on a finished run (default: the newest in ./cache), opens the CSSI page and moves the stratum
slider with the keyboard. For each move it times key press -> the embedding scatter redrawn with the new number
of strata and the status line updated (a precomputed grid position), and, for a position off the grid, key
press -> the background job's point on the curve. Baseline, in this process: scoring that level from scratch
(``analysis.scoring.cssi_levels.score_level`` with the run's null settings), which a slider without the precomputed grid
would wait for on every move.

    python tests/benchmarks/cssi_slider.py [--cache cache] [--run RUN_ID] [--moves 6]
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def open_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--window-size=1400,2200", f"--user-data-dir={tempfile.mkdtemp()}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def strata_drawn(driver) -> int:
    """Number of strata in the embedding scatter (one trace per stratum)."""
    return driver.execute_script(
        "const g = document.querySelector(\"div[id='{\\\"figure\\\":\\\"cssi-embedding\\\",\\\"type\\\":\\\"graph\\\"}'] "
        ".js-plotly-plot\"); return g && g.data ? g.data.length : 0;")


def live_points(driver) -> bool:
    """Whether the curve has the green trace of levels computed in the app."""
    return driver.execute_script(
        "const g = document.querySelector(\"div[id='{\\\"figure\\\":\\\"cssi-curve\\\",\\\"type\\\":\\\"graph\\\"}'] "
        ".js-plotly-plot\"); if (!g || !g.data) return false;"
        "return g.data.some(t => (t.name || '').includes('computed here'));")


def main() -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    from werkzeug.serving import make_server

    from analysis.scoring.cssi_levels import score_level
    from analysis.io.references import ReferenceNetwork
    from analysis.scoring.strata import add_level
    from app.data import ArtifactStore
    from app.job_cache import open_job_cache
    from app.main import create_app
    from app.pages.cssi import live_key
    from app.settings import AppSettings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=str(ROOT / "cache"))
    ap.add_argument("--run")
    ap.add_argument("--moves", type=int, default=6)
    args = ap.parse_args()
    store = ArtifactStore(Path(args.cache))
    run_id = args.run or next(m.run_id for m in store.runs()[0] if store.has_table(m.run_id, "cssi_curve"))
    run = store.cssi(run_id)
    grid = sorted(int(k) for k in run.strata.levels["n_strata"].unique())
    off_grid = next(k for k in range(2, min(20, run.strata.n_fine - 1) + 1) if k not in grid)
    manifest = store.manifest(run_id)
    cfg = manifest.config.cssi

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = AppSettings(cache_dir=Path(args.cache), port=port, run_id=run_id)
    with open_job_cache(settings.cache_dir) as jobs:   # the off-grid level is really computed
        for reference in manifest.references:
            for direction in cfg.directions:
                jobs.delete(live_key(run_id, reference["name"], direction, off_grid))
    app = create_app(settings)
    server = make_server("127.0.0.1", port, app.server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = open_browser()
    wait = WebDriverWait(driver, 300, poll_frequency=0.02)
    try:
        driver.get(f"http://127.0.0.1:{port}/cssi")
        wait.until(lambda d: strata_drawn(d) > 0 and "strata" in d.find_element(By.ID, "cssi-status").text)
        thumb = driver.find_element(By.CSS_SELECTOR, "#cssi-n-strata [role=slider]")
        position = int(thumb.get_attribute("aria-valuenow"))
        on_grid = []
        for i in range(args.moves):
            key, step = (Keys.ARROW_LEFT, -1) if position > 2 and i % 2 == 0 else (Keys.ARROW_RIGHT, 1)
            target = position + step
            if target not in grid:
                key, step, target = (Keys.ARROW_RIGHT, 1, position + 1) if key == Keys.ARROW_LEFT else \
                    (Keys.ARROW_LEFT, -1, position - 1)
            if target not in grid:
                continue
            t0 = time.perf_counter()
            thumb.send_keys(key)
            wait.until(lambda d: d.find_element(By.ID, "cssi-status").text.startswith(f"{target} strata ("))
            n_found = len(set(run.strata.assignment(target)))
            wait.until(lambda d: strata_drawn(d) == n_found)
            on_grid.append(time.perf_counter() - t0)
            position = target
        expected = len(set(store.cssi_assignment(run_id, off_grid)))
        while position != off_grid:
            step = 1 if off_grid > position else -1
            t0 = time.perf_counter()
            thumb.send_keys(Keys.ARROW_RIGHT if step > 0 else Keys.ARROW_LEFT)
            position += step
            wait.until(lambda d, p=position: d.find_element(By.ID, "cssi-status").text.startswith(f"{p} strata"))
        wait.until(lambda d: strata_drawn(d) == expected)
        drawn = time.perf_counter() - t0
        wait.until(live_points)
        computed = time.perf_counter() - t0
    finally:
        driver.quit()
        server.shutdown()

    edges = store.reference_edges(run_id)
    name = manifest.reference_names[0]
    ref = ReferenceNetwork(name, edges[edges["reference"] == name], {})
    t0 = time.perf_counter()
    level = dataclasses.replace(run, strata=add_level(run.strata, grid[len(grid) // 2]))
    score_level(level, store.panel(run_id), ref, grid[len(grid) // 2], direction=cfg.directions[0],
                n_null=cfg.n_null, n_gene_null=cfg.n_gene_null, seed=cfg.seed)
    scratch = time.perf_counter() - t0
    median = sorted(on_grid)[len(on_grid) // 2]
    print(f"run {run_id}: {len(run.cells)} cells, {run.strata.n_fine} fine clusters, grid {grid}")
    print(f"on-grid slider move -> figures + status redrawn: median {median:.3f} s over {len(on_grid)} moves "
          f"(min {min(on_grid):.3f}, max {max(on_grid):.3f})")
    print(f"off-grid move to {off_grid}: embedding + status {drawn:.3f} s; background score + nulls on the curve "
          f"{computed:.2f} s")
    print(f"baseline, scoring one level from scratch in-process: {scratch:.2f} s "
          f"({scratch / median:.0f}x the on-grid response)")


if __name__ == "__main__":
    main()
