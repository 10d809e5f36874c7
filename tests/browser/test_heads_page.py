"""Real headless Chromium: open the Heads page of a precomputed tiny run, click a head, see its gene x gene view,
download the SVG of that view."""
from __future__ import annotations

import time
from urllib.parse import parse_qs, urlparse

import pytest

from tests.browser.conftest import choose, export_and_wait, graph_selector, pick_run, scroll_to, trace_types

selenium = pytest.importorskip("selenium")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.mark.parametrize("page,figures", [
    ("perturbation", ["pert-box", "pert-scatter", "pert-grid"]),
    ("confounds", ["conf-incremental", "conf-residual", "conf-degree", "conf-balance"]),
    ("statistics", ["stats-volcano"]),
])
def test_analysis_pages_render(server, browser, page, figures):
    browser.get(f"{server}/{page}")
    wait = WebDriverWait(browser, 60)
    for name in figures:
        wait.until(lambda d, n=name: len(trace_types(d, n)) > 0)
    if page == "statistics":
        rows = browser.find_elements(By.CSS_SELECTOR, "#stats-table tbody tr")
        assert len(rows) > 2
        assert "the paper: 63 of 95" in browser.find_element(By.ID, "stats-note").text
        wait.until(lambda d: "questions this run can test" in d.find_element(By.ID, "statistics-bottom-line").text)
        assert "of the tests below" in browser.find_element(By.ID, "statistics-bottom-line").text
        tiers = browser.find_element(By.ID, "stats-tiers").text
        assert "Perturbation-first validation" in tiers and "beyond the paper" in tiers
    if page == "confounds":
        wait.until(lambda d: "TFs above their degree null" in d.find_element(By.ID, "conf-per-tf-note").text)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#conf-per-tf tbody tr")) > 2
        wait.until(lambda d: "smallest detectable gain" in d.find_element(By.ID, "conf-note").text)


def run_custom_de(server, browser, lfc_threshold: str) -> WebDriverWait:
    """Open the Perturbation page, run custom DE at ``lfc_threshold`` and wait for its result; the page's wait."""
    browser.get(f"{server}/perturbation")
    wait = WebDriverWait(browser, 90)
    wait.until(lambda d: len(trace_types(d, "pert-box")) > 0)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#perturbation-bottom-line .verdict"))   # layout settled
    lfc = browser.find_element(By.ID, "pert-custom-lfc")
    scroll_to(browser, lfc)
    lfc.clear()
    lfc.send_keys(lfc_threshold)
    run = browser.find_element(By.ID, "pert-custom-run")
    scroll_to(browser, run)
    run.click()
    wait.until(lambda d: "evaluable perturbations" in d.find_element(By.ID, "pert-custom-status").text)
    return wait


def test_custom_de_runs_in_background_and_is_cached(server, browser):
    wait = run_custom_de(server, browser, "0.3")
    assert len(trace_types(browser, "pert-custom")) >= 3
    first = browser.find_element(By.ID, "pert-custom-status").text
    browser.find_element(By.ID, "pert-custom-run").click()
    wait.until(lambda d: "cached" in d.find_element(By.ID, "pert-custom-progress").text)
    assert browser.find_element(By.ID, "pert-custom-status").text == first


def test_an_export_names_the_run_its_figure_was_drawn_from(server, browser, embedded_cache):
    """A custom DE result drawn for the Geneformer run stays on screen when the picker moves to the scGPT run; its
    export still names the Geneformer run (title and file name), not the picker's."""
    runs = embedded_cache[1]
    wait = run_custom_de(server, browser, "0.4")
    pick_run(browser, "scgpt")
    wait.until(lambda d: "scgpt" in d.find_element(By.ID, "app-run-header").text)
    assert len(trace_types(browser, "pert-custom")) >= 3
    svg = export_and_wait(browser, "pert-custom", "svg")
    assert svg.name == f"pert-custom_geneformer_{runs['geneformer'].name}.svg"
    assert "geneformer: embedded tiny geneformer" in svg.read_text()


def test_live_ablation_of_two_heads(server, browser):
    browser.get(f"{server}/ablation")
    wait = WebDriverWait(browser, 120)
    wait.until(lambda d: len(trace_types(d, "abl-dose")) > 0 and len(trace_types(d, "abl-fidelity")) > 0)
    wait.until(lambda d: "Heads ranked by AUROC" in d.find_element(By.ID, "abl-note").text)
    time.sleep(1)
    for head in ("L0H1", "L1H2"):
        choose(browser, "abl-heads", head)
    chosen = browser.find_element(By.ID, "abl-heads").text
    assert "L0H1" in chosen and "L1H2" in chosen
    cells = browser.find_element(By.ID, "abl-cells")
    cells.clear()
    cells.send_keys("12")
    browser.find_element(By.ID, "abl-run").click()
    wait.until(lambda d: d.find_element(By.ID, "abl-run").get_attribute("disabled") is not None)  # job running
    wait.until(lambda d: "masked-gene cross-entropy" in d.find_element(By.ID, "abl-status").text)
    status = browser.find_element(By.ID, "abl-status").text
    assert "zero_head@L0[1]+zero_head@L1[2] on 12 cells" in status
    wait.until(lambda d: "done" in d.find_element(By.ID, "abl-progress").text)  # the progress bar reached the end
    wait.until(lambda d: "your selection" in str(d.execute_script(
        "return document.querySelector(arguments[0] + ' .js-plotly-plot').data.map(t => t.name)",
        graph_selector("abl-dose"))))
    browser.find_element(By.ID, "abl-run").click()
    wait.until(lambda d: "cached" in d.find_element(By.ID, "abl-progress").text)
    assert browser.find_element(By.ID, "abl-status").text == status
    browser.get(f"{server}/statistics")
    wait.until(lambda d: "live_ablation" in d.find_element(By.ID, "stats-table").text
               or len(d.find_elements(By.CSS_SELECTOR, "#stats-table tbody tr")) > 2)


def test_click_head_then_download_svg(server, browser):
    wait = WebDriverWait(browser, 60)
    browser.get(server + "/heads")
    wait.until(lambda d: "heatmap" in trace_types(d, "heads-heatmap"))
    # before any click the page opens on the best head by AUROC, not an empty frame
    wait.until(lambda d: "Showing the best head by AUROC" in d.find_element(By.ID, "heads-head-label").text
               or "Selected:" in d.find_element(By.ID, "heads-head-label").text)
    wait.until(lambda d: "heatmap" in trace_types(d, "heads-gene-gene"))
    wait.until(lambda d: "of TF bootstrap draws" in d.find_element(By.ID, "heads-order").text)
    drag = browser.find_element(By.CSS_SELECTOR, graph_selector("heads-heatmap") + " .nsewdrag")
    # click the lower-right quarter: layer 1 (of 2), head 2 or 3 (of 4)
    ActionChains(browser).move_to_element_with_offset(drag, drag.size["width"] // 4,
                                                      drag.size["height"] // 4).click().perform()
    wait.until(lambda d: "Selected: layer 1, head" in d.find_element(By.ID, "heads-head-label").text)
    wait.until(lambda d: parse_qs(urlparse(d.current_url).query).get("head", [""])[0].startswith("L1H"))
    wait.until(lambda d: "heatmap" in trace_types(d, "heads-gene-gene"))
    title = browser.execute_script(
        "return document.querySelector(arguments[0] + ' .js-plotly-plot').layout.title.text;",
        graph_selector("heads-gene-gene"))
    assert title.startswith("Layer 1, head") and "TF as query" in title
    rows = browser.find_elements(By.CSS_SELECTOR, "#heads-top-edges tbody tr")
    assert len(rows) > 1
    svg = export_and_wait(browser, "heads-gene-gene", "svg")
    content = svg.read_text()
    assert content.lstrip().startswith("<svg") and "Layer 1, head" in content


def test_the_plot_toolbar_offers_nothing_that_leaves_the_machine(server, browser):
    """Hovering a figure shows its toolbar: a PNG download and the view tools, never an upload to Plotly Cloud."""
    browser.get(server + "/heads")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "heatmap" in trace_types(d, "heads-heatmap"))
    drag = browser.find_element(By.CSS_SELECTOR, graph_selector("heads-heatmap") + " .nsewdrag")
    ActionChains(browser).move_to_element(drag).perform()
    titles = wait.until(lambda d: [b.get_attribute("data-title") for b in d.find_elements(
        By.CSS_SELECTOR, graph_selector("heads-heatmap") + " .modebar-btn")])
    assert "Download plot as a PNG" in titles
    assert not [t for t in titles if any(w in t.lower() for w in ("share", "cloud", "chart studio"))], titles


def test_the_head_on_screen_is_in_the_url_and_a_link_opens_it(server, browser):
    wait = WebDriverWait(browser, 60)
    browser.get(server + "/heads?head=L0H3")
    wait.until(lambda d: "Selected: layer 0, head 3" in d.find_element(By.ID, "heads-head-label").text)
    wait.until(lambda d: parse_qs(urlparse(d.current_url).query).get("head") == ["L0H3"])
    title = browser.execute_script("return document.querySelector(arguments[0] + ' .js-plotly-plot').layout.title"
                                   ".text;", graph_selector("heads-gene-gene"))
    assert title.startswith("Layer 0, head 3")
    browser.get(server + "/heads?head=L9H9")                       # a head the run lacks says so
    wait.until(lambda d: "has no attention for layer 9 head 9" in d.find_element(By.ID, "heads-head-label").text)


def test_the_network_of_the_head_on_screen_downloads_for_cytoscape_and_networkx(server, browser, embedded_cache):
    import networkx as nx

    from tests.browser.conftest import choose

    run_dir = embedded_cache[1]["geneformer"]
    wait = WebDriverWait(browser, 60)
    browser.get(f"{server}/heads?run={run_dir.name}&head=L1H2")
    wait.until(lambda d: "L1H2" in d.find_element(By.ID, "net-source").text)
    choose(browser, "net-source", "L1 mean")
    top = browser.find_element(By.ID, "net-top")
    scroll_to(browser, top)
    top.clear()
    top.send_keys("3")
    before = set(browser.downloads.glob("*_network.graphml"))
    button = browser.find_element(By.CSS_SELECTOR, "button[id='{\"fmt\":\"graphml\",\"type\":\"net-btn\"}']")
    scroll_to(browser, button)
    button.click()
    deadline = time.time() + 60
    while time.time() < deadline and not (set(browser.downloads.glob("*_network.graphml")) - before):
        time.sleep(0.3)
    (path,) = set(browser.downloads.glob("*_network.graphml")) - before
    assert "L1_mean" in path.name
    graph = nx.read_graphml(path)
    regulators = [n for n, d in graph.nodes(data=True) if d["regulator"]]
    assert regulators and all(graph.out_degree(n) <= 3 for n in regulators)
    assert all("weight" in d and "n_cells" in d for _, _, d in graph.edges(data=True))
