"""Real headless Chromium on the Compare page: the embedded default's Geneformer and scGPT runs are chosen out of the
box; both draw a reference-recovery profile by depth (attention and their correlation baseline) and a
perturbation-first profile, and the confound table has one row per run. The CSV export carries both runs' rows."""
from __future__ import annotations

import pytest

from tests.browser.conftest import export_and_wait, graph_selector, trace_types

selenium = pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def trace_names(driver, name):
    return driver.execute_script("const g = document.querySelector(arguments[0] + ' .js-plotly-plot');"
                                 "return g && g.data ? g.data.map(t => t.name) : [];", graph_selector(name))


def test_geneformer_and_scgpt_side_by_side(server, browser):
    browser.get(f"{server}/compare")
    wait = WebDriverWait(browser, 90)
    wait.until(lambda d: len(trace_types(d, "compare-layers") or []) >= 4)
    names = trace_names(browser, "compare-layers")
    for family in ("geneformer", "scgpt"):
        assert any(n.startswith(family) and n.endswith("attention") for n in names), names
        assert any(n.startswith(family) and n.endswith("correlation") for n in names), names
    wait.until(lambda d: len(trace_types(d, "compare-perturbation") or []) >= 6)
    rows = browser.find_elements(By.CSS_SELECTOR, "#compare-table tbody tr")
    assert len(rows) >= 3                                     # header row + one per run
    table = browser.find_element(By.ID, "compare-table").text
    assert "geneformer" in table and "scgpt" in table
    assert "genes are in every chosen run's panel" in browser.find_element(By.ID, "compare-note").text
    exported = export_and_wait(browser, "compare-layers", "csv")
    content = exported.read_text()
    assert exported.name == "compare-layers.csv"              # not named after the header's run
    assert "geneformer" in content and "scgpt" in content and "relative_depth" in content
