"""Browser-test fixtures: the session's precomputed embedded default (a tiny Geneformer run and a tiny scGPT run)
served by the real app, opening on the Geneformer run, and one real headless Chromium (Debian's chromium +
chromium-driver), shared by every browser test of the session."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items):
    for item in items:
        if "browser" in item.path.parts and not (CHROMIUM and DRIVER):
            item.add_marker(pytest.mark.skip(reason="Debian chromium + chromium-driver not installed"))


def serve_app(cache: Path, run_id: str, *flags: str) -> tuple[subprocess.Popen, str]:
    """``python -m app`` serving ``cache`` (opening on ``run_id``; more command-line ``flags``) on a free port in its
    own process, as the README serves it (its own thread bounds, job launcher and workers: nothing of it stays in the
    test process); (the server process, its base url) once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "app", "--cache", str(cache), "--port", str(port), "--run", run_id,
                               *flags],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                if answer.status == 200:
                    return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.3)
    server.kill()
    raise RuntimeError(f"the app serving {cache} did not answer within 120 s (exit code {server.poll()})")


@pytest.fixture(scope="session")
def server(embedded_cache):
    cache, runs = embedded_cache
    process, url = serve_app(cache, runs["geneformer"].name)
    yield url
    process.terminate()
    process.wait(30)


def headless_chromium(downloads, performance_log: bool = False):
    """A headless Chromium (its profile and downloads under ``downloads``); ``performance_log``: keep the DevTools
    network events, for ``driver.get_log("performance")`` (the app's load test records its callbacks so)."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--window-size=1400,2200", f"--user-data-dir={downloads / 'profile'}"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    if performance_log:
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    return driver


@pytest.fixture(scope="session")
def session_browser(tmp_path_factory):
    driver = headless_chromium(tmp_path_factory.mktemp("downloads"))
    yield driver
    driver.quit()


@pytest.fixture
def browser(session_browser):
    """The session's Chromium, left on a blank page after each test: a Dash page left open keeps polling the server
    (job progress, intervals) through every test that follows."""
    yield session_browser
    session_browser.get("about:blank")


def graph_selector(name: str) -> str:
    return f"div[id='{{\"figure\":\"{name}\",\"type\":\"graph\"}}']"


def trace_types(driver, name):
    return driver.execute_script(
        "const g = document.querySelector(arguments[0] + ' .js-plotly-plot');"
        "return g && g.data ? g.data.map(t => t.type) : [];", graph_selector(name))


def export_and_wait(driver, figure: str, fmt: str, seconds: float = 90):
    """Click a figure card's export button and return the file it downloads (``<figure>*.<fmt>``, not one an
    earlier test downloaded)."""
    import time
    from pathlib import Path

    from selenium.webdriver.common.by import By
    button = driver.find_element(
        By.CSS_SELECTOR, f"button[id='{{\"figure\":\"{figure}\",\"fmt\":\"{fmt}\",\"type\":\"export-btn\"}}']")
    scroll_to(driver, button)
    before = set(Path(driver.downloads).glob(f"{figure}*.{fmt}"))
    button.click()
    deadline, files = time.time() + seconds, []
    while time.time() < deadline and not files:
        files = [f for f in Path(driver.downloads).glob(f"{figure}*.{fmt}") if f not in before]
        time.sleep(0.3)
    assert files, f"no {fmt.upper()} of {figure} was downloaded"
    return files[0]


def pick_run(browser, text: str) -> None:
    """Open the run picker, search ``text`` and click the first matching run."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    button = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "app-run-select"))
    scroll_to(browser, button)
    button.click()
    search = WebDriverWait(browser, 10).until(lambda d: d.find_element(By.CSS_SELECTOR, "input.dash-dropdown-search"))
    search.send_keys(text)
    option = WebDriverWait(browser, 10).until(lambda d: next(
        (o for o in d.find_elements(By.CSS_SELECTOR, "[role=option]") if text in o.text), None))
    option.click()          # a single-value picker closes on its own


def scroll_to(driver, element) -> None:
    """Bring ``element`` to the middle of the window at once: Bootstrap's CSS makes scrolling smooth (animated), and a
    click sent while the page still moves lands on whatever passes under the pointer (seen: the Ablation page's
    heads dropdown, a page below the window, clicked under the fidelity heatmap)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'});", element)


def choose(browser, dropdown_id, text):
    """Open a Dash 4 dropdown (``dropdown_id``: its id, or a pattern id's JSON), search for ``text`` and tick the
    matching option."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    button = browser.find_element(By.CSS_SELECTOR, f"[id='{dropdown_id}']")   # a pattern id is JSON: no By.ID
    scroll_to(browser, button)
    button.click()
    search = WebDriverWait(browser, 10).until(lambda d: d.find_element(By.CSS_SELECTOR, "input.dash-dropdown-search"))
    search.send_keys(text)
    option = WebDriverWait(browser, 10).until(lambda d: next(
        (o for o in d.find_elements(By.CSS_SELECTOR, "[role=option]") if o.text.strip() == text), None))
    option.click()
    try:
        search.send_keys(Keys.ESCAPE)      # a multi-select stays open; close it
    except StaleElementReferenceException:
        pass                               # a single-select closed itself (or its choice navigated away)
