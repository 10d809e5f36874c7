"""Real headless Chromium on the frame around every page: the run on screen lives in the URL (a deep link opens its
run, a reload keeps it, a picked run is written to the URL and carried by the navigation links, Back returns to the
run before, a link to a run the cache lacks says so), the browser tab names the page and the run, and at 900 px the
navigation collapses behind a toggler and nothing is wider than the window."""
from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest

from tests.browser.conftest import pick_run

selenium = pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def url_run(browser) -> str | None:
    return parse_qs(urlparse(browser.current_url).query).get("run", [None])[0]


def header(browser) -> str:
    return browser.find_element(By.ID, "app-run-header").text


def test_a_deep_link_opens_its_run_and_a_reload_keeps_it(server, browser, embedded_cache):
    runs = embedded_cache[1]
    scgpt = runs["scgpt"].name
    symbol = pd.read_parquet(runs["scgpt"] / "panel.parquet")["symbol"].iloc[0]
    wait = WebDriverWait(browser, 60)
    browser.get(f"{server}/gene?symbol={symbol}&run={scgpt}")
    wait.until(lambda d: scgpt in header(d))
    wait.until(lambda d: d.title.startswith("Gene - ") and "scgpt" in d.title and d.title.endswith("explorer"))
    wait.until(lambda d: symbol in d.find_element(By.ID, "gene-title").text)
    browser.refresh()
    wait.until(lambda d: scgpt in header(d))
    assert url_run(browser) == scgpt and "geneformer" not in header(browser)


def test_a_picked_run_goes_into_the_url_and_the_links(server, browser, embedded_cache):
    runs = embedded_cache[1]
    geneformer, scgpt = runs["geneformer"].name, runs["scgpt"].name
    wait = WebDriverWait(browser, 60)
    browser.get(f"{server}/")
    wait.until(lambda d: geneformer in header(d))
    assert url_run(browser) is None                       # a URL without a run is left alone (no Back trap)
    pick_run(browser, "scgpt")
    wait.until(lambda d: url_run(d) == scgpt)
    wait.until(lambda d: "Run overview - " in d.title and "scgpt" in d.title)
    browser.find_element(By.LINK_TEXT, "Heads").click()
    wait.until(lambda d: urlparse(d.current_url).path == "/heads" and url_run(d) == scgpt)
    assert scgpt in header(browser)
    wait.until(lambda d: d.title.startswith("Heads - "))
    pick_run(browser, "geneformer")
    wait.until(lambda d: url_run(d) == geneformer and geneformer in header(d))
    browser.back()
    wait.until(lambda d: url_run(d) == scgpt and scgpt in header(d))


def test_a_link_to_a_run_the_cache_lacks_says_so(server, browser, embedded_cache):
    geneformer = embedded_cache[1]["geneformer"].name
    wait = WebDriverWait(browser, 60)
    browser.get(f"{server}/heads?run=no-such-run")
    wait.until(lambda d: "not in this cache" in d.find_element(By.ID, "app-error").text)
    assert "no-such-run" in browser.find_element(By.ID, "app-error").text
    wait.until(lambda d: url_run(d) == geneformer and geneformer in header(d))


def test_at_900_px_the_navigation_collapses_and_nothing_overflows(server, browser, embedded_cache):
    size = browser.get_window_size()
    try:
        browser.set_window_size(900, 1000)
        wait = WebDriverWait(browser, 60)
        browser.get(f"{server}/")
        wait.until(lambda d: embedded_cache[1]["geneformer"].name in header(d))
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 900
        picker = browser.find_element(By.ID, "app-run-select")
        assert picker.is_displayed() and picker.rect["x"] + picker.rect["width"] <= 900
        heads = browser.find_element(By.CSS_SELECTOR, "#app-nav-collapse a[href^='/heads']")
        assert not heads.is_displayed()
        browser.find_element(By.ID, "app-nav-toggle").click()
        wait.until(lambda d: heads.is_displayed())
        heads.click()
        wait.until(lambda d: urlparse(d.current_url).path == "/heads")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 900
        browser.get(f"{server}/features")                 # three figures side by side on a wide screen
        cards = ("features-map", "features-superposition", "features-programmes")
        wait.until(lambda d: all(d.find_elements(By.CSS_SELECTOR, f"#card-{c} .main-svg") for c in cards))
        widths = [browser.find_element(By.ID, f"card-{c}").rect["width"] for c in cards]
        assert min(widths) > 600, widths                  # stacked full width, not squeezed to a third
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 900
    finally:
        browser.set_window_size(size["width"], size["height"])
