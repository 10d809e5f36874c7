"""Real headless Chromium on the scGPT run of the embedded default: pick it in the run picker, see its model family
named above the page, open its Heads page, click a head, and export the head's gene x gene view as SVG (the file
name and the figure name the model family); then every other page draws its figures for that run."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.browser.conftest import graph_selector, pick_run, trace_types

selenium = pytest.importorskip("selenium")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def test_scgpt_run_heads_page_names_the_family_and_exports(server, browser, embedded_cache):
    _, runs = embedded_cache
    wait = WebDriverWait(browser, 60)
    browser.get(server + "/heads")
    wait.until(lambda d: "geneformer" in d.find_element(By.ID, "app-run-header").text)
    pick_run(browser, "scgpt")
    wait.until(lambda d: "scgpt" in d.find_element(By.ID, "app-run-header").text)
    assert runs["scgpt"].name in browser.find_element(By.ID, "app-run-header").text
    wait.until(lambda d: "heatmap" in trace_types(d, "heads-heatmap"))
    wait.until(lambda d: "scgpt" in d.find_element(By.ID, "heads-convention").text.lower())
    drag = browser.find_element(By.CSS_SELECTOR, graph_selector("heads-heatmap") + " .nsewdrag")
    ActionChains(browser).move_to_element_with_offset(drag, drag.size["width"] // 4,
                                                      drag.size["height"] // 4).click().perform()
    wait.until(lambda d: "heatmap" in trace_types(d, "heads-gene-gene"))
    before = set(Path(browser.downloads).glob("*.svg"))
    browser.find_element(By.CSS_SELECTOR,
                         "button[id='{\"figure\":\"heads-gene-gene\",\"fmt\":\"svg\",\"type\":\"export-btn\"}']").click()
    deadline, new = time.time() + 90, []
    while time.time() < deadline and not new:
        new = [p for p in Path(browser.downloads).glob("*.svg") if p not in before and "scgpt" in p.name]
        time.sleep(0.5)
    assert new, "no SVG of the scGPT run was downloaded"
    assert new[0].name.startswith(f"heads-gene-gene_scgpt_{runs['scgpt'].name}")
    content = new[0].read_text()
    assert content.lstrip().startswith("<svg") and "scgpt: embedded tiny scgpt" in content


PAGES = {"Run overview": ["overview-layer-profile"], "Ablation": ["abl-dose", "abl-fidelity"],
         "CSSI": ["cssi-curve", "cssi-embedding"], "Perturbation": ["pert-box", "pert-scatter", "pert-grid"],
         "Confounds": ["conf-incremental", "conf-degree"], "Statistics": ["stats-volcano"]}


def test_every_page_draws_the_scgpt_run(server, browser):
    wait = WebDriverWait(browser, 60)
    browser.get(server + "/")
    pick_run(browser, "scgpt")
    wait.until(lambda d: "scgpt" in d.find_element(By.ID, "app-run-header").text)
    for page, figures in PAGES.items():
        browser.find_element(By.LINK_TEXT, page).click()     # client-side navigation keeps the picked run
        for name in figures:
            wait.until(lambda d, n=name: len(trace_types(d, n)) > 0)
        assert "scgpt" in browser.find_element(By.ID, "app-run-header").text
    browser.find_element(By.LINK_TEXT, "Ablation").click()
    wait.until(lambda d: "masked-value MSE" in d.find_element(By.ID, "abl-note").text)
