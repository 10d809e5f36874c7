"""Real headless Chromium on the Claims, Layers and Gene views of the embedded default: the claim map gives every claim
a verdict in each BH family, turns the cross-context claim testable once a second run is added, and downloads as an
HTML report naming its tests; the Layers page draws the per-layer profiles and the per-TF bootstrap; the navigation
bar's gene search opens a gene's page."""
from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import time
from pathlib import Path

import pytest

from tests.browser.conftest import choose, graph_selector, scroll_to, trace_types

selenium = pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

VERDICTS = {"supported", "not supported", "not testable"}


def claim_rows(browser) -> dict[str, list[str]]:
    rows = browser.find_elements(By.CSS_SELECTOR, "#claims-table tbody tr")
    cells = [[c.text for c in r.find_elements(By.CSS_SELECTOR, "td")] for r in rows]
    return {c[0]: c for c in cells if c}


def test_claim_map_contexts_and_report(server, browser, embedded_cache):
    _, runs = embedded_cache
    browser.get(f"{server}/claims")
    wait = WebDriverWait(browser, 90)
    wait.until(lambda d: len(claim_rows(d)) == 8)
    rows = claim_rows(browser)
    for claim, cells in rows.items():
        assert set(cells[2:5]) <= VERDICTS, (claim, cells)
    cross = next(c for k, c in rows.items() if k.startswith("The attention-correlation relationship"))
    assert cross[2] == "not testable"
    choose(browser, "claims-contexts", f"{runs['scgpt'].name} (scgpt: embedded tiny scgpt, 150 cells)")
    wait.until(lambda d: next(c for k, c in claim_rows(d).items()
                              if k.startswith("The attention-correlation"))[2] != "not testable")
    button = browser.find_element(By.ID, "claims-report")
    scroll_to(browser, button)
    button.click()
    deadline, files = time.time() + 60, []
    while time.time() < deadline and not files:
        files = list(Path(browser.downloads).glob("claims_geneformer_*.html"))
        time.sleep(0.3)
    assert files, "no claim report was downloaded"
    report = files[0].read_text()
    assert "Claim-to-evidence map" in report and "trivial_baselines::" in report and "replication::" in report


def test_layers_page_and_gene_search(server, browser, embedded_cache):
    browser.get(f"{server}/layers")
    wait = WebDriverWait(browser, 90)
    wait.until(lambda d: len(trace_types(d, "layers-biology") or []) >= 2)
    names = browser.execute_script("const g = document.querySelector(arguments[0] + ' .js-plotly-plot');"
                                   "return g.data.map(t => t.name);", graph_selector("layers-biology"))
    assert any("co-regulation (pairs)" in n for n in names) and any("(regulatory)" in n for n in names)
    wait.until(lambda d: len(trace_types(d, "layers-tf-bootstrap") or []) == 1)
    assert "have a 95% CI entirely above 0.5" in browser.find_element(By.ID, "layers-tf-note").text
    choose(browser, "app-gene-search", "TF01")
    wait.until(lambda d: urlparse(d.current_url).path == "/gene")
    query = parse_qs(urlparse(browser.current_url).query)
    assert query["symbol"] == ["TF01"] and query["run"] == [embedded_cache[1]["geneformer"].name]   # the run goes too
    wait.until(lambda d: "Reference partners" in d.find_element(By.ID, "gene-body").text)
    body = browser.find_element(By.ID, "gene-body").text
    assert "reference TF" in body and "Heads whose strongest edges involve it" in body
    assert "Cell-state strata" in body
