"""Real headless Chromium on the Compare page: the embedded default's Geneformer and scGPT runs are chosen out of the
box; both draw a reference-recovery profile by depth (attention and their correlation baseline) and a
perturbation-first profile, and the confound table has one row per run. The CSV export carries both runs' rows. A
head picked for one run is starred on the recovery profile; cross-context replication, the SN14.9 check and
cross-model convergence are drawn for both runs."""
from __future__ import annotations

import json
import re

import pytest

from tests.browser.conftest import choose, export_and_wait, graph_selector, scroll_to, trace_types

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
        assert any(n.startswith(family) and re.search(r": correlation \d\.\d{3}$", n) for n in names), names
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


def test_per_run_head_replication_and_convergence(server, browser, embedded_cache):
    _, runs = embedded_cache
    browser.get(f"{server}/compare")
    wait = WebDriverWait(browser, 90)
    wait.until(lambda d: len(trace_types(d, "compare-layers") or []) >= 4)
    picker = json.dumps({"run": runs["scgpt"].name, "type": "compare-head"}, separators=(",", ":"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"[id='{picker}']"))
    choose(browser, picker, "L1H2")
    wait.until(lambda d: "chosen heads" in trace_names(d, "compare-layers"))
    wait.until(lambda d: len(trace_names(d, "compare-replication") or []) == 2)
    tests = browser.find_element(By.ID, "compare-replication-tests").text
    assert "read-out advantage differs" in tests and "attention L1 vs correlation" in tests
    button = browser.find_element(By.ID, "compare-universe-button")
    scroll_to(browser, button)
    button.click()
    wait.until(lambda d: "hvg_only" in d.find_element(By.ID, "compare-universe").text)
    check = browser.find_element(By.ID, "compare-universe").text
    assert "geneformer" in check and "scgpt" in check
    wait.until(lambda d: len(trace_names(d, "compare-convergence") or []) == 4)   # 2 runs x attention, correlation
    wait.until(lambda d: len(trace_names(d, "compare-agreement") or []) == 2)
    consistency = browser.find_element(By.ID, "compare-consistency").text
    assert "attention_layer_mean" in consistency and "spearman" in consistency


def test_feature_level_summary_per_run(server, browser, embedded_cache):
    """Issue 14's feature-level comparison: one row per run and SAE layer, each number the run's own tables'."""
    import pandas as pd

    _, runs = embedded_cache
    browser.get(f"{server}/compare")
    wait = WebDriverWait(browser, 90)
    wait.until(lambda d: len(trace_types(d, "compare-features") or []) >= 2)
    data = pd.read_csv(export_and_wait(browser, "compare-features", "csv"))
    assert len(data) == 4 and all(sorted(g) == [0, 1] for _, g in data.groupby("run")["layer"])
    for family, run_dir in runs.items():
        mine = data[data["run"].str.startswith(family)].set_index("layer")
        layers = pd.read_parquet(run_dir / "sae_layers.parquet").set_index("layer")
        regulatory = pd.read_parquet(run_dir / "sae_regulatory.parquet")
        assert mine["fve"].to_numpy() == pytest.approx(layers["fraction_variance_explained"].to_numpy())
        assert mine["n_modules"].tolist() == layers["n_modules"].tolist()
        assert mine["regulatory_tfs"].tolist() == regulatory.groupby("layer").size().tolist()
        assert mine["regulatory_passing"].tolist() == regulatory.groupby("layer")["passes"].sum().tolist()
        assert mine.loc[1, "relative_depth"] == 1.0
