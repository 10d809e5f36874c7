"""Real headless Chromium on the answer-first screens: the Run overview opens with the verdict panel, whose sentences
and stances are those :func:`analysis.scoring.verdicts.verdicts` computes from the run's own registry and tables
(read here from the run's files), with the bottom line over them and the claim map restated; a verdict's link opens
the page that shows it, on the same run, whose bottom line repeats that verdict; the Heads, Layers, CSSI and Features
pages open with the finding :func:`analysis.scoring.page_findings.page_findings` computes from the run's files."""
from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest

from analysis.scoring.page_findings import page_findings
from analysis.scoring.verdicts import bottom_line, verdicts

selenium = pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _expected(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    registry = pd.read_parquet(run_dir / "statistics_registry.parquet")
    tables = {t: pd.read_parquet(run_dir / f"{t}.parquet") for t in ("residualisation", "ablation_results")
              if (run_dir / f"{t}.parquet").exists()}
    return verdicts(registry, tables, reference=manifest["references"][0]["name"])


@pytest.mark.parametrize("family", ["geneformer", "scgpt"])
def test_the_overview_opens_with_the_runs_verdicts(server, browser, embedded_cache, family):
    run_dir = embedded_cache[1][family]
    expected = _expected(run_dir)
    wait = WebDriverWait(browser, 90)
    browser.get(f"{server}/?run={run_dir.name}")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#overview-verdicts li.verdict"))
    shown = browser.find_elements(By.CSS_SELECTOR, "#overview-verdicts li.verdict")
    assert [li.get_attribute("data-key") for li in shown] == [v.key for v in expected]
    for li, v in zip(shown, expected):
        assert li.get_attribute("data-stance") == v.stance
        assert li.find_element(By.CSS_SELECTOR, ".verdict-sentence").text == v.sentence
    assert browser.find_element(By.CSS_SELECTOR, ".verdict-bottom-line").text == bottom_line(expected)
    readings = browser.find_elements(By.CSS_SELECTOR, "#overview-claims td[data-dash-column='reading']")
    assert len(readings) == 8 and all(r.text for r in readings)


def test_a_verdicts_link_opens_its_page_on_the_same_run(server, browser, embedded_cache):
    run_dir = embedded_cache[1]["scgpt"]
    ranking = next(v for v in _expected(run_dir) if v.key == "head_ranking")
    wait = WebDriverWait(browser, 90)
    browser.get(f"{server}/?run={run_dir.name}")
    item = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#overview-verdicts li[data-key='head_ranking']"))
    item.find_element(By.LINK_TEXT, "see Ablation").click()
    wait.until(lambda d: urlparse(d.current_url).path == "/ablation")
    assert parse_qs(urlparse(browser.current_url).query)["run"] == [run_dir.name]
    line = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#ablation-bottom-line .verdict-sentence"))
    assert line.text == ranking.sentence


@pytest.mark.parametrize("page,key", [("heads", "heads"), ("layers", "layers"), ("cssi", "cssi"),
                                      ("features", "features")])
def test_each_evidence_page_opens_with_its_finding(server, browser, embedded_cache, page, key):
    run_dir = embedded_cache[1]["geneformer"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    tables = {t: pd.read_parquet(run_dir / f"{t}.parquet") for t in ("head_ranking", "layer_biology", "sae_regulatory")
              if (run_dir / f"{t}.parquet").exists()}
    expected = page_findings(pd.read_parquet(run_dir / "statistics_registry.parquet"), tables,
                             reference=manifest["references"][0]["name"])[key]
    # the test-size run has every analysis these pages read; a depth trend needs three layers and it has two
    assert expected.stance != "untestable" or (key == "layers" and manifest["model"]["n_layers"] < 3)
    browser.get(f"{server}/{page}?run={run_dir.name}")
    item = WebDriverWait(browser, 90).until(
        lambda d: d.find_element(By.CSS_SELECTOR, f"#{page}-bottom-line li.verdict"))
    assert item.get_attribute("data-stance") == expected.stance
    assert item.find_element(By.CSS_SELECTOR, ".verdict-sentence").text == expected.sentence
    if expected.test:
        assert expected.test in item.find_element(By.CSS_SELECTOR, ".verdict-evidence").text
