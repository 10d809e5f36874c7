"""Real headless Chromium on the CSSI page: moving the strata slider redraws the embedding, the per-stratum edges
and the curve marker from the precomputed grid; a position off the grid is drawn at once and scored by a
background job whose point joins the curve; the curve exports as CSV with that point; the slider's position is in
the URL and a link reopens it."""
from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest

from tests.browser.conftest import export_and_wait, graph_selector

selenium = pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def plot(driver, name: str, expression: str):
    """Evaluate ``expression`` on the plotly graph div ``g`` of figure ``name`` (None until it is drawn)."""
    return driver.execute_script(
        "const g = document.querySelector(arguments[0] + ' .js-plotly-plot');"
        f"return g && g.data && g.data.length ? ({expression}) : null;", graph_selector(name))


def status(driver) -> str:
    return driver.find_element(By.ID, "cssi-status").text


def test_slider_moves_views_and_scores_off_grid_in_background(server, browser):
    wait = WebDriverWait(browser, 180)
    browser.get(f"{server}/cssi")
    wait.until(lambda d: plot(d, "cssi-embedding", "g.data.length") == 3 and status(d).startswith("3 strata ("))
    assert "precomputed" in status(browser) and "random-strata null" in status(browser)
    assert plot(browser, "cssi-curve", "g.layout.shapes[0].x0") == 3
    assert plot(browser, "cssi-edges", "g.data[0].type") == "heatmap"
    edges_before = plot(browser, "cssi-edges", "g.data[0].x.join('|')")
    thumb = browser.find_element(By.CSS_SELECTOR, "#cssi-n-strata [role=slider]")

    thumb.send_keys(Keys.ARROW_LEFT)   # 3 -> 2, on the grid
    wait.until(lambda d: status(d).startswith("2 strata (") and plot(d, "cssi-embedding", "g.data.length") == 2)
    assert plot(browser, "cssi-curve", "g.layout.shapes[0].x0") == 2
    assert plot(browser, "cssi-edges", "g.data[0].x.join('|')") != edges_before   # two stratum columns now

    thumb.send_keys(Keys.ARROW_RIGHT)
    wait.until(lambda d: status(d).startswith("3 strata ("))
    thumb.send_keys(Keys.ARROW_RIGHT)  # 4: off the grid (2, 3, 5)
    wait.until(lambda d: plot(d, "cssi-embedding", "g.data.length") == 4)   # drawn without waiting for the job
    wait.until(lambda d: plot(d, "cssi-curve", "g.data.some(t => (t.name || '').includes('computed here'))"))
    wait.until(lambda d: status(d).startswith("4 strata (") and "computed here" in status(d))
    wait.until(lambda d: "done" in d.find_element(By.ID, "cssi-progress").text)

    data = pd.read_csv(export_and_wait(browser, "cssi-curve", "csv"))
    assert sorted(data["n_strata"]) == [2, 3, 4, 5]
    assert {"value", "pooled", "null_low", "null_high", "p_random_strata"} <= set(data.columns)

    wait.until(lambda d: parse_qs(urlparse(d.current_url).query).get("strata") == ["4"])   # the position is linked
    browser.get(browser.current_url.replace("strata=4", "strata=2"))
    wait.until(lambda d: status(d).startswith("2 strata (") and plot(d, "cssi-embedding", "g.data.length") == 2)
    assert browser.find_element(By.CSS_SELECTOR, "#cssi-n-strata [role=slider]").get_attribute("aria-valuenow") == "2"
