"""Real headless Chromium, as a user works the tables and the Ablation page: typing "< 0.05" into the Statistics
table's q filter keeps exactly the rows the run's registry has with q < 0.05 (never a blank q); the Ablation page
opens on the decisive comparison, shows the other controls when ticked, crosses out the structural rows of its table
and labels every whole-layer and MLP row apart."""
from __future__ import annotations

import pandas as pd
import pytest

from tests.browser.conftest import graph_selector, scroll_to

selenium = pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _page_counter(browser, table: str) -> int:
    """The number of pages the DataTable ``table`` shows (its page counter: "1 / N")."""
    return int(browser.find_element(By.CSS_SELECTOR, f"#{table} .last-page").text)


def _filter(browser, table: str, column: str, text: str) -> None:
    cell = browser.find_element(By.CSS_SELECTOR, f"#{table} th.dash-filter[data-dash-column='{column}'] input")
    scroll_to(browser, cell)
    cell.click()
    cell.send_keys(Keys.CONTROL, "a")                  # replace what the filter held (modifiers end with the call)
    cell.send_keys(Keys.DELETE)
    cell.send_keys(text + Keys.ENTER)


def test_a_blank_q_never_passes_the_q_filter(server, browser, embedded_cache):
    run_dir = embedded_cache[1]["geneformer"]
    registry = pd.read_parquet(run_dir / "statistics_registry.parquet")
    expected = int((registry["q"] < 0.05).sum())
    assert registry["q"].isna().sum() > 0 and expected > 0        # the run has both, or the test proves nothing
    wait = WebDriverWait(browser, 60)
    browser.get(f"{server}/statistics?run={run_dir.name}")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#stats-table tbody tr")) > 2)
    _filter(browser, "stats-table", "q", "< 0.05")
    pages = (expected + 14) // 15
    wait.until(lambda d: _page_counter(d, "stats-table") == pages if pages > 1
               else not d.find_elements(By.CSS_SELECTOR, "#stats-table .last-page"))
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll(\"#stats-table td[data-dash-column='q']\")).map(c => c.innerText)")
    assert shown and all(text.strip() for text in shown)
    assert all(float(text) < 0.05 for text in shown)
    _filter(browser, "stats-table", "q", "is blank")
    wait.until(lambda d: all(not c.text.strip() for c in
                             d.find_elements(By.CSS_SELECTOR, "#stats-table td[data-dash-column='q']")))


def _trace_names(browser) -> list[str]:
    return browser.execute_script("const g = document.querySelector(arguments[0] + ' .js-plotly-plot');"
                                  "return g && g.data ? g.data.map(t => t.name) : [];", graph_selector("abl-dose"))


def test_the_ablation_page_shows_the_decisive_comparison_first(server, browser, embedded_cache):
    run_dir = embedded_cache[1]["geneformer"]
    wait = WebDriverWait(browser, 90)
    browser.get(f"{server}/ablation?run={run_dir.name}")
    wait.until(lambda d: any(n and n.startswith("top-k heads (zero)") for n in _trace_names(d)))
    names = _trace_names(browser)
    assert any(n.startswith("random-k heads (zero): range of draws") for n in names)
    assert "bottom-k heads (zero)" in names and not any("uniform" in (n or "") for n in names)
    layer_rows = browser.execute_script(
        "const t = document.querySelector(arguments[0] + ' .js-plotly-plot').data"
        ".find(t => t.name === 'whole layer / MLP (zero)'); return t ? Array.from(t.y) : [];",
        graph_selector("abl-dose"))
    assert layer_rows and len(set(layer_rows)) == len(layer_rows)
    uniform = next(label for label in browser.find_elements(By.CSS_SELECTOR, "#abl-families label")
                   if label.text == "top-k heads (uniform)")
    scroll_to(browser, uniform)
    uniform.click()
    wait.until(lambda d: "top-k heads (uniform)" in _trace_names(d))

    _filter(browser, "abl-table", "structural", "yes")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#abl-table td[data-dash-column='structural']")
               and all(c.text == "yes" for c in
                       d.find_elements(By.CSS_SELECTOR, "#abl-table td[data-dash-column='structural']")))
    cell = browser.find_element(By.CSS_SELECTOR, "#abl-table td[data-dash-column='intervention']")
    assert "line-through" in cell.value_of_css_property("text-decoration")
    q = browser.find_element(By.CSS_SELECTOR, "#abl-table td[data-dash-column='q']").text
    assert q.strip() == ""                                           # a structural row carries no test
