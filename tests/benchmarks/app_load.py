"""Benchmark (not a test): the app's cached views under load: ``--clients`` concurrent clients
replaying every view a browser asks for, with nothing else running and again while a live ablation runs as the app
runs it (a background job started from the Ablation page's Run button in a real browser); first against a server
that caches no view (``--view-cache-mib 0``, the baseline, ``--baseline-rounds`` rounds), then against the app as
it is served (cached views, app.view_cache).

1. A copy of run ``--run`` (default: the newest Geneformer run of ``--cache``, after the README's first command)
   is served by ``python -m app`` in its own process, as the README serves it; the copy keeps the benchmark's
   live ablations out of the user's cache. Each server gets a fresh copy (no job result carries over).
2. Headless Chromium opens every page (the gene page on a reference TF) and records each Dash callback request
   it sends (the DevTools network log): that is the set of views, each named by its outputs.
3. Each client is a thread sending those requests one after another, ``--rounds`` times in its own shuffled order,
   each on a fresh connection; the server's time is the ``Server-Timing`` header of each answer (:mod:`app.timing`),
   and ``X-View-Cache`` says whether a cached view was a hit.
4. The same replay while a live ablation of two heads on ``--cells`` cells runs: the browser clicks Run and, when
   the job ends before the replay does, clicks again on one cell fewer (a new request, not a cached answer). Only
   requests that started and ended while a job process was alive count as loaded.

Prints per view the cached server's 95th percentile of server time unloaded and loaded, then the worst view; the
last line is the ratio of the 95th percentile over every loaded request, cached / uncached (target: every view
under 150 ms loaded).

    python tests/benchmarks/app_load.py [--cache cache] [--run RUN_ID] [--clients 20] [--rounds 3]
        [--baseline-rounds 1] [--cells 200]
"""
from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from analysis.io.artifacts import scan_runs  # noqa: E402
from app.main import PAGES  # noqa: E402
from tests.browser.conftest import choose, headless_chromium, serve_app, trace_types  # noqa: E402

CALLBACK = "/_dash-update-component"
TARGET_MS = 150.0


@dataclass(frozen=True)
class View:
    name: str     # the callback's outputs
    body: bytes   # the request the browser sent


@dataclass
class Sample:
    view: str
    cache: str          # the X-View-Cache header: hit, miss, or "" (not a cached view / no cache)
    server_ms: float
    client_ms: float
    start: float
    end: float


def serve_copy(cache: Path, run_id: str, workdir: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    """Copy the run into ``workdir``'s cache and serve it with ``python -m app [flags]``; (server process, base
    url)."""
    shutil.copytree(cache / "artifacts" / run_id, workdir / "cache" / "artifacts" / run_id)
    return serve_app(workdir / "cache", run_id, *flags)


def recorded_callbacks(driver) -> list[bytes]:
    """Bodies of the Dash callback requests in the browser's network log since the last call."""
    bodies = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] != "Network.requestWillBeSent":
            continue
        request = message["params"]["request"]
        if request["method"] != "POST" or CALLBACK not in request["url"] or "cacheKey=" in request["url"]:
            continue
        body = request.get("postData")
        if body is None:
            body = driver.execute_cdp_cmd("Network.getRequestPostData",
                                          {"requestId": message["params"]["requestId"]})["postData"]
        bodies.append(body.encode())
    return bodies


def record_views(driver, url: str, gene: str, quiet_s: float = 2.0) -> list[View]:
    """Open every page and keep each distinct callback request it makes (waiting until none came for ``quiet_s``)."""
    views: dict[bytes, View] = {}
    for page in PAGES:
        driver.get(url + page.PATH + (f"?symbol={gene}" if page.PATH == "/gene" else ""))
        last, seen = time.time(), 0
        while time.time() - last < quiet_s:
            time.sleep(0.25)
            for body in recorded_callbacks(driver):
                seen += 1
                last = time.time()
                views.setdefault(body, View(f"{page.PATH} {json.loads(body)['output']}", body))
        print(f"  {page.PATH}: {seen} callback requests")
    return list(views.values())


def background_outputs(cache: Path) -> set[str]:
    """Outputs (Dash's callback keys) of the app's background callbacks: their request starts a job."""
    from app.main import create_app
    from app.settings import AppSettings
    app = create_app(AppSettings(cache_dir=cache))
    return {key for key, spec in app.callback_map.items() if spec.get("background")}


def ask(port: int, view: View) -> Sample:
    """Send one view's request on a fresh connection; its server and client times."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", CALLBACK, body=view.body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    end = time.perf_counter()
    connection.close()
    if response.status not in (200, 204):
        raise RuntimeError(f"{view.name}: HTTP {response.status}")
    timing = response.getheader("Server-Timing", "")
    server_ms = float(timing.split("dur=")[1]) if "dur=" in timing else float("nan")
    return Sample(view.name, response.getheader("X-View-Cache", ""), server_ms, 1000 * (end - start), start, end)


def replay(port: int, views: list[View], clients: int, rounds: int, until=None) -> list[Sample]:
    """Every client sends every view ``rounds`` times in its own order (``until()`` true: the clients stop early)."""
    samples: list[Sample] = []
    lock, gate = threading.Lock(), threading.Barrier(clients)

    def client(seed: int) -> None:
        order = [v for _ in range(rounds) for v in random.Random(seed).sample(views, len(views))]
        gate.wait()
        for view in order:
            if until is not None and until():
                return
            sample = ask(port, view)
            with lock:
                samples.append(sample)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples


class LiveAblation:
    """Keeps a live ablation running in the app (module doc, step 4) and records when a job process was alive."""

    def __init__(self, driver, url: str, server: subprocess.Popen, heads: tuple[str, str], cells: int):
        self.driver, self.url, self.heads, self.cells = driver, url, heads, cells
        self.server = psutil.Process(server.pid)
        self.alive: list[list[float]] = []   # [start, end] of each stretch with a job process alive
        self.stop = threading.Event()
        self.jobs, self.clicked = 0, 0.0

    def _job_running(self) -> bool:
        """A job is a child of the launcher, the server's child process (app.jobs)."""
        try:
            return any(child.children() for child in self.server.children())
        except psutil.NoSuchProcess:   # one ended while being asked
            return False

    def _click_run(self) -> None:
        """Ask for the next job (one cell fewer than the last: not a cached answer) once Run is enabled again."""
        from selenium.webdriver.common.by import By
        if self.driver.find_element(By.ID, "abl-run").get_attribute("disabled") is not None:
            return
        cells = self.driver.find_element(By.ID, "abl-cells")
        cells.clear()
        cells.send_keys(str(max(2, self.cells - self.jobs)))
        self.driver.find_element(By.ID, "abl-run").click()
        self.jobs += 1
        self.clicked = time.perf_counter()

    def start(self) -> None:
        from selenium.common.exceptions import ElementClickInterceptedException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
        self.driver.get(self.url + "/ablation")
        wait = WebDriverWait(self.driver, 120)
        wait.until(lambda d: len(trace_types(d, "abl-dose")) > 0 and len(trace_types(d, "abl-fidelity")) > 0)
        wait.until(lambda d: "Heads ranked" in d.find_element(By.ID, "abl-note").text)
        time.sleep(1)   # the page has laid out: the dropdown does not move under the click
        for head in self.heads:
            for attempt in range(5):   # seen on the embedded run: the first clicks land on the page still settling
                try:
                    choose(self.driver, "abl-heads", head)
                    break
                except ElementClickInterceptedException:
                    if attempt == 4:
                        raise
                    time.sleep(2)
        self._click_run()
        deadline = time.time() + 60
        while not self._job_running():
            if time.time() > deadline:
                raise SystemExit("the live ablation job did not start")
            time.sleep(0.05)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        """Every 10 ms: extend the current alive stretch, or, a job having ended, ask for the next (a click needs a
        few seconds to become a job: none is asked for within 3 s of the last)."""
        stretch = None
        while not self.stop.is_set():
            now = time.perf_counter()
            if self._job_running():
                if stretch is None:
                    stretch = [now, now]
                    self.alive.append(stretch)
                stretch[1] = now
            else:
                stretch = None
                if now - self.clicked > 3:
                    self._click_run()
            time.sleep(0.01)

    def covered(self, sample: Sample) -> bool:
        return any(a <= sample.start and sample.end <= b for a, b in self.alive)


def p95(values) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), 95))


def load_test(args, cache: Path, manifest, gene: str, rounds: int, *flags: str) -> dict[str, pd.DataFrame]:
    """Serve a fresh copy of the run with ``flags``, record its views, replay them unloaded and with a live ablation
    running; {"unloaded" | "loaded": samples}."""
    workdir = Path(tempfile.mkdtemp(prefix="app-load-"))
    server, url = serve_copy(cache, manifest.run_id, workdir, *flags)
    driver = headless_chromium(workdir, performance_log=True)   # records the views
    user = headless_chromium(workdir / "user")                   # a second user, running the live ablation
    try:
        print(f"run {manifest.run_id} ({manifest.family}), served at {url} {' '.join(flags)}; recording the views")
        views = record_views(driver, url, gene)
        port = int(url.rsplit(":", 1)[1])
        background = background_outputs(workdir / "cache")
        jobs = [v for v in views if json.loads(v.body)["output"] in background]
        views = [v for v in views if v not in jobs]
        print(f"left out {len(jobs)} background-job callback(s) (they start jobs; not cached views): "
              + ", ".join(v.name for v in jobs))
        print(f"{len(views)} views; {args.clients} clients x {rounds} rounds, unloaded")
        unloaded = replay(port, views, args.clients, rounds)
        live = LiveAblation(user, url, server, ("L0H0", f"L{manifest.model.n_layers - 1}H1"), args.cells)
        live.start()
        print("loaded: a live ablation running")
        loaded_all = replay(port, views, args.clients, rounds)
        live.stop.set()
        loaded = [s for s in loaded_all if live.covered(s)]
        print(f"{len(loaded)} of {len(loaded_all)} loaded requests ran while one of {live.jobs} live ablation "
              f"job(s) was alive")
    finally:
        driver.quit()
        user.quit()
        server.terminate()
        server.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    return {name: pd.DataFrame([vars(s) for s in samples]) for name, samples in
            (("unloaded", unloaded), ("loaded", loaded))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=ROOT / "cache")
    ap.add_argument("--run", help="run id (default: the newest Geneformer run)")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline-rounds", type=int, default=1, help="rounds against the server caching no view")
    ap.add_argument("--cells", type=int, default=200, help="cells of the live ablation")
    args = ap.parse_args()
    runs, _ = scan_runs(args.cache)
    chosen = [m for m in runs if (m.run_id == args.run if args.run else m.family == "geneformer")]
    if not chosen:
        raise SystemExit(f"no run {args.run or 'of Geneformer'} in {args.cache}: run `python precompute.py` first")
    manifest = chosen[0]
    refs = pd.read_parquet(args.cache / "artifacts" / manifest.run_id / "reference_edges.parquet")
    gene = str(refs["tf"].iloc[0])
    print("== baseline: no cached views")
    baseline = load_test(args, args.cache, manifest, gene, args.baseline_rounds, "--view-cache-mib", "0")
    print("== cached views (as served)")
    frames = load_test(args, args.cache, manifest, gene, args.rounds)
    table = pd.DataFrame({f"{name} p95 ms": frame.groupby("view")["server_ms"].quantile(0.95)
                          for name, frame in frames.items()})
    table["loaded n"] = frames["loaded"].groupby("view").size()
    table["uncached loaded p95 ms"] = baseline["loaded"].groupby("view")["server_ms"].quantile(0.95)
    with pd.option_context("display.width", 220, "display.max_colwidth", 90, "display.max_rows", 200):
        print(table.sort_values("loaded p95 ms", ascending=False).round(1).to_string())
    both = pd.concat(frames.values())
    print("cached-view answers: " + ", ".join(f"{state or 'not a cached view'} {n}"
                                             for state, n in both["cache"].value_counts().items()))
    worst = table["loaded p95 ms"].idxmax()
    print(f"client-side p95 loaded: uncached {p95(baseline['loaded']['client_ms']):.1f} ms, cached "
          f"{p95(frames['loaded']['client_ms']):.1f} ms")
    print(f"worst view loaded: {worst}: p95 {table.loc[worst, 'loaded p95 ms']:.1f} ms (target {TARGET_MS:.0f} ms); "
          f"views over target: {int((table['loaded p95 ms'] > TARGET_MS).sum())} of {len(table)}")
    print(f"server-time p95 over every view, cached: unloaded {p95(frames['unloaded']['server_ms']):.1f} ms, loaded "
          f"{p95(frames['loaded']['server_ms']):.1f} ms; uncached: unloaded "
          f"{p95(baseline['unloaded']['server_ms']):.1f} ms, loaded {p95(baseline['loaded']['server_ms']):.1f} ms")
    a, b = p95(baseline["loaded"]["server_ms"]), p95(frames["loaded"]["server_ms"])
    print(f"server-time p95 over every loaded request: uncached {a:.1f} ms, cached {b:.1f} ms: ratio {b / a:.3f}")


if __name__ == "__main__":
    main()
