"""Real headless Chromium on the Features page: the read-out layer's SAE opens with its quality line, the
feature map and the cell-programme bars; filtering the table by a gene and clicking a feature's row opens its card,
whose genes are that feature's strongest, computed here from the run's stored latents, and whose enrichment table
equals scipy's Fisher exact test on the feature's top genes against each TF's true targets and each gene's
co-regulation neighbours, whose genes x cells view holds the feature's activations where it fired, and whose
cross-layer neighbours equal numpy's correlation of the two layers' activations; another layer redraws the map; the
card exports as CSV."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact

from analysis.io import files
from analysis.scoring.sae_features import feature_gene_means
from tests.browser.conftest import choose, export_and_wait, scroll_to, trace_types

selenium = pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def test_feature_map_table_and_card(server, browser, embedded_cache):
    run_dir = embedded_cache[1]["geneformer"]
    features = pd.read_parquet(run_dir / "sae_features.parquet").query("layer == 1 and not dead")
    feature = int(features.sort_values("firing_rate").iloc[-1]["feature"])    # the most frequent live feature
    gene = features.set_index("feature").loc[feature, "top_genes"].split(", ")[0]
    wait = WebDriverWait(browser, 120)
    browser.get(f"{server}/features")
    wait.until(lambda d: "fraction of variance explained" in d.find_element(By.ID, "features-note").text)
    assert browser.find_element(By.ID, "features-note").text.startswith("L1: 256 features")
    assert browser.find_element(By.ID, "features-card-hint").is_displayed()          # no empty card before a pick
    assert not browser.find_element(By.ID, "features-enrichment").is_displayed()
    wait.until(lambda d: trace_types(d, "features-map") and trace_types(d, "features-programmes"))
    wait.until(lambda d: trace_types(d, "features-superposition") == ["histogram"])
    hist = pd.read_csv(export_and_wait(browser, "features-superposition", "csv"))
    layer1 = pd.read_parquet(run_dir / "sae_features.parquet").query("layer == 1")
    assert hist["max_svd_cos"].to_numpy() == pytest.approx(layer1["max_svd_cos"].to_numpy())
    assert set(trace_types(browser, "features-map")) == {"scattergl"}
    assert trace_types(browser, "features-programmes") == ["bar", "bar"]      # best feature and the shuffled null

    column_filter = browser.find_element(By.CSS_SELECTOR, "#features-table th[data-dash-column='top_genes'] input")
    scroll_to(browser, column_filter)
    column_filter.send_keys(gene + Keys.ENTER)
    wait.until(lambda d: all(gene in c.text for c in d.find_elements(
        By.CSS_SELECTOR, "#features-table td[data-dash-column='top_genes']")))
    cell = next(c for c in browser.find_elements(By.CSS_SELECTOR, "#features-table td[data-dash-column='feature']")
                if c.text.strip() == str(feature))
    scroll_to(browser, cell)
    cell.click()
    wait.until(lambda d: d.find_element(By.ID, "features-card-title").text.startswith(f"L1 feature {feature}:"))
    wait.until(lambda d: trace_types(d, "features-card") == ["bar"])
    assert browser.find_element(By.ID, "features-enrichment").is_displayed()
    assert not browser.find_element(By.ID, "features-card-hint").is_displayed()
    with np.load(run_dir / files.SAE_ROWS) as rows, np.load(run_dir / files.sae_latents(1)) as latents:
        means, _ = feature_gene_means(latents["indices"], latents["values"], rows["row_gene"],
                                      rows["gene_symbol"].size, 256)
        symbols = rows["gene_symbol"]
    data = pd.read_csv(export_and_wait(browser, "features-card", "csv"))
    want = symbols[np.argsort(-means[feature], kind="stable")[:len(data)]]
    assert list(data["symbol"]) == list(want) and data["symbol"].iloc[0] == gene
    assert np.allclose(data["mean_activation"], np.sort(means[feature])[::-1][:len(data)], rtol=1e-5)

    wait.until(lambda d: trace_types(d, "features-card-cells") == ["heatmap"])
    cells = pd.read_csv(export_and_wait(browser, "features-card-cells", "csv"))
    with np.load(run_dir / files.SAE_ROWS) as rows, np.load(run_dir / files.sae_latents(1)) as latents:
        hit = (latents["indices"] == feature) & (latents["values"] > 0)
        fired = np.nonzero(hit.any(axis=1))[0]
        where = set(zip(np.searchsorted(rows["capture_cell"], rows["row_cell"][fired]).tolist(),
                        rows["gene_symbol"][rows["row_gene"][fired]].tolist()))
        value = dict(zip(zip(np.searchsorted(rows["capture_cell"], rows["row_cell"][fired]).tolist(),
                             rows["gene_symbol"][rows["row_gene"][fired]].tolist()), latents["values"][hit].tolist()))
    assert len(cells) and set(cells["symbol"]) <= set(data["symbol"])
    assert {(int(c), s) for c, s in zip(cells["cell"], cells["symbol"])} <= where
    assert all(v == pytest.approx(value[(int(c), s)], rel=1e-5) for c, s, v in
               zip(cells["cell"], cells["symbol"], cells["activation"]))

    rows = browser.find_elements(By.CSS_SELECTOR, "#features-enrichment tbody tr")
    shown = [[c.text for c in r.find_elements(By.CSS_SELECTOR, "td")] for r in rows]
    shown = [r for r in shown if r]
    top = set(np.argsort(-means[feature], kind="stable")[:20][np.sort(means[feature])[::-1][:20] > 0])
    observed = (means > 0).any(axis=0)
    index = {str(s): i for i, s in enumerate(symbols)}
    sets = {f"{ref}: {tf} regulon": set(grp["target"])
            for (ref, tf), grp in pd.read_parquet(run_dir / "reference_edges.parquet").groupby(["reference", "tf"])}
    pairs = pd.read_parquet(run_dir / "pair_reference_edges.parquet")
    for ref, a_gene, b_gene in pairs[["reference", "tf", "target"]].itertuples(index=False):
        sets.setdefault(f"{ref}: neighbours of {a_gene}", set()).add(b_gene)
        sets.setdefault(f"{ref}: neighbours of {b_gene}", set()).add(a_gene)
    expected = {}                    # every regulon or neighbourhood of >= 3 captured genes that overlaps the top genes
    for name, members in sets.items():
        targets = {index[t] for t in members if t in index and observed[index[t]]}
        a = len(top & targets)
        if len(targets) >= 3 and a:
            b, c = len(top) - a, len(targets) - a
            d = int(observed.sum()) - a - b - c
            expected[name] = (a, fisher_exact([[a, b], [c, d]], alternative="greater").pvalue)
    assert any("neighbours of" in name for name in expected)
    assert expected and len(shown) == min(8, len(expected))
    for name, overlap, *_rest, p_text, _q in shown:
        assert int(overlap) == expected[name][0]
        assert float(p_text) == pytest.approx(expected[name][1], rel=1e-2)

    neighbours = [[c.text for c in r.find_elements(By.CSS_SELECTOR, "td")]
                  for r in browser.find_elements(By.CSS_SELECTOR, "#features-neighbours tbody tr")]
    neighbours = [r for r in neighbours if r]
    with np.load(run_dir / files.sae_latents(0)) as l0, np.load(run_dir / files.sae_latents(1)) as l1:
        dense = {}
        for layer, lat in ((0, l0), (1, l1)):
            x = np.zeros((lat["indices"].shape[0], 256))
            np.put_along_axis(x, lat["indices"].astype(np.int64), lat["values"], axis=1)
            dense[layer] = x
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.array([np.corrcoef(dense[1][:, feature], dense[0][:, f])[0, 1] for f in range(256)])
    want = np.argsort(-np.nan_to_num(r, nan=-np.inf), kind="stable")[:3]
    assert [int(row[1]) for row in neighbours] == list(want) and {row[0] for row in neighbours} == {"0"}
    assert np.allclose([float(row[2]) for row in neighbours], r[want], rtol=1e-2)

    choose(browser, "features-layer", "L0")
    wait.until(lambda d: d.find_element(By.ID, "features-note").text.startswith("L0:"))


def test_live_feature_ablation_from_a_card(server, browser, embedded_cache):
    """Open a feature's card on L0 (not the last layer, so the edit reaches every position through L1's attention),
    ablate and amplify it in the background, and find the result on the dose-response, in every gene's prediction
    change (its own genes: the card's), in the results table, cached on a second click, and in the statistics
    registry as exploratory."""
    run_dir = embedded_cache[1]["geneformer"]
    features = pd.read_parquet(run_dir / "sae_features.parquet").query("layer == 0 and not dead")
    feature = int(features.sort_values("firing_rate").iloc[-1]["feature"])
    wait = WebDriverWait(browser, 180)
    browser.get(f"{server}/features")
    wait.until(lambda d: "fraction of variance explained" in d.find_element(By.ID, "features-note").text)
    choose(browser, "features-layer", "L0")
    wait.until(lambda d: d.find_element(By.ID, "features-note").text.startswith("L0:"))
    cell = wait.until(lambda d: next((c for c in d.find_elements(
        By.CSS_SELECTOR, "#features-table td[data-dash-column='feature']") if c.text.strip() == str(feature)), None)
        or d.execute_script("document.querySelector('#features-table .next-page').click()"))
    scroll_to(browser, cell)
    cell.click()
    wait.until(lambda d: d.find_element(By.ID, "features-card-title").text.startswith(f"L0 feature {feature}:"))
    wait.until(lambda d: f"{feature}:" in d.find_element(By.ID, "features-edit-features").text)   # the card's feature

    scales = browser.find_element(By.ID, "features-edit-scales")
    scales.clear()
    scales.send_keys("0, 3")
    cells = browser.find_element(By.ID, "features-edit-cells")
    cells.clear()
    cells.send_keys("12")
    run = browser.find_element(By.ID, "features-edit-run")
    scroll_to(browser, run)
    run.click()
    wait.until(lambda d: d.find_element(By.ID, "features-edit-run").get_attribute("disabled") is not None)
    wait.until(lambda d: f"L0 features ({feature},) on 12 cells" in d.find_element(By.ID, "features-edit-status").text)
    status = browser.find_element(By.ID, "features-edit-status").text
    assert "x0 " in status and "x3 " in status and "statistics registry" in status
    wait.until(lambda d: "done" in d.find_element(By.ID, "features-edit-progress").text)
    wait.until(lambda d: trace_types(d, "features-dose") and trace_types(d, "features-specificity") == ["box", "box"])
    dose = pd.read_csv(export_and_wait(browser, "features-dose", "csv"))
    assert sorted(dose["scale"]) == [0.0, 3.0] and set(dose["readout"]) == {"mlm_loss"}
    assert set(dose["intervention"]) == {f"sae@L0[{feature}]x0", f"sae@L0[{feature}]x3"}
    genes = pd.read_csv(export_and_wait(browser, "features-specificity", "csv"))
    assert genes["intervention"].iloc[0] == f"sae@L0[{feature}]x3"          # the edit farthest from scale 1
    with np.load(run_dir / files.SAE_ROWS) as rows, np.load(run_dir / files.sae_latents(0)) as latents:
        means, _ = feature_gene_means(latents["indices"], latents["values"], rows["row_gene"],
                                      rows["gene_symbol"].size, 256)
        symbols = rows["gene_symbol"]
    top = np.argsort(-means[feature], kind="stable")[:20]
    own = set(symbols[top[means[feature][top] > 0]])
    assert set(genes.loc[genes["own"], "symbol"]) == own & set(genes["symbol"])
    assert (genes["mean_change"] >= 0).all() and genes["mean_change"].max() > 0
    table = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#features-edit-table td[data-dash-column="
                                                                     "'intervention']")]
    assert f"sae@L0[{feature}]x0" in table

    browser.find_element(By.ID, "features-edit-run").click()
    wait.until(lambda d: "cached" in d.find_element(By.ID, "features-edit-progress").text)
    assert browser.find_element(By.ID, "features-edit-status").text == status
    browser.get(f"{server}/statistics")
    column_filter = wait.until(lambda d: d.find_element(By.CSS_SELECTOR,
                                                        "#stats-table th[data-dash-column='analysis'] input"))
    column_filter.send_keys("live_feature_edit" + Keys.ENTER)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#stats-table td[data-dash-column='analysis']")) == 4)


def test_gene_search_modules_cell_states_and_regulatory_test(server, browser, embedded_cache):
    """The search by gene lists the features most active on it (numpy on the stored latents); the co-activation graph
    and the regulatory test draw, the regulatory table is the run's; a feature picked in the gene search opens its
    card, whose cell-state table equals scipy's Fisher exact test on its most active cells and whose knock-downs are
    the regulatory test's TFs it responds to."""
    run_dir = embedded_cache[1]["geneformer"]
    wait = WebDriverWait(browser, 120)
    browser.get(f"{server}/features")
    wait.until(lambda d: d.find_element(By.ID, "features-note").text.startswith("L1:"))
    wait.until(lambda d: trace_types(d, "features-modules") and trace_types(d, "features-regulatory") == ["bar", "bar"])
    regulatory = pd.read_parquet(run_dir / "sae_regulatory.parquet").query("layer == 1")
    note = browser.find_element(By.ID, "features-regulatory-note").text
    assert note.startswith(f"L1: {int(regulatory['passes'].sum())} of {len(regulatory)} knocked-down TFs pass")
    shown = {c.text for c in browser.find_elements(By.CSS_SELECTOR,
                                                   "#features-regulatory-table td[data-dash-column='tf']")}
    assert shown == set(regulatory["tf"].head(8))

    with np.load(run_dir / files.SAE_ROWS) as rows, np.load(run_dir / files.sae_latents(1)) as latents:
        means, _ = feature_gene_means(latents["indices"], latents["values"], rows["row_gene"],
                                      rows["gene_symbol"].size, 256)
        symbols, row_cell, capture = rows["gene_symbol"], rows["row_cell"], rows["capture_cell"]
        states = rows["capture_state"]
        activity = np.zeros((capture.size, 256))
        per_cell = np.bincount(np.searchsorted(capture, row_cell), minlength=capture.size)
        np.add.at(activity, (np.repeat(np.searchsorted(capture, row_cell), 8), latents["indices"].ravel()),
                  latents["values"].ravel())
        activity /= per_cell[:, None]
    gene = str(symbols[int(np.argmax((means > 0).sum(axis=0)))])      # the gene most features fire on
    choose(browser, "features-gene", gene)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#features-gene-table td[data-dash-column='feature']"))
    listed = [int(c.text) for c in browser.find_elements(By.CSS_SELECTOR,
                                                         "#features-gene-table td[data-dash-column='feature']")]
    g = int(np.flatnonzero(symbols == gene)[0])
    want = np.argsort(-means[:, g], kind="stable")[:8]
    assert listed == list(want)

    first = browser.find_element(By.CSS_SELECTOR, "#features-gene-table td[data-dash-column='feature']")
    scroll_to(browser, first)
    first.click()
    feature = listed[0]
    wait.until(lambda d: d.find_element(By.ID, "features-card-title").text.startswith(f"L1 feature {feature}:"))
    column = activity[:, feature]
    top = np.zeros(column.size, bool)
    top[np.argsort(-column, kind="stable")[:int(round(0.1 * column.size))]] = True
    top &= column > 0
    expected = {}
    for state in sorted(set(states)):
        member = states == state
        a = int((top & member).sum())
        if a:
            table = [[a, int(top.sum()) - a], [int(member.sum()) - a, int((~top & ~member).sum())]]
            expected[f"cell state {state}"] = (a, fisher_exact(table, alternative="greater")[1])
    assert expected
    wait.until(lambda d: len([r for r in d.find_elements(By.CSS_SELECTOR, "#features-states tbody tr")
                              if r.find_elements(By.CSS_SELECTOR, "td")]) == min(8, len(expected)))
    for row in browser.find_elements(By.CSS_SELECTOR, "#features-states tbody tr"):
        cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "td")]
        if cells:
            assert int(cells[1]) == expected[cells[0]][0]
            assert float(cells[6]) == pytest.approx(expected[cells[0]][1], rel=1e-2)
    responds = {tf for tf, text in zip(regulatory["tf"], regulatory["responding"])
                if str(feature) in text.split(",")}
    knocked = {c.text for c in browser.find_elements(By.CSS_SELECTOR, "#features-knockdowns td[data-dash-column='tf']")}
    assert knocked == responds


def click_point(browser, name: str, x: float, y: float) -> None:
    """Click the plot of figure card ``name`` where the data point (x, y) is drawn, as a user's mouse does: the
    pixel comes from the figure's own axes (``c2p``, which takes data values on log axes too)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from tests.browser.conftest import graph_selector
    drag = browser.find_element(By.CSS_SELECTOR, graph_selector(name) + " .nsewdrag")
    scroll_to(browser, drag)
    px, py = browser.execute_script(
        "const g = document.querySelector(arguments[0] + ' .js-plotly-plot');"
        "return [g._fullLayout.xaxis.c2p(arguments[1]), g._fullLayout.yaxis.c2p(arguments[2])];",
        graph_selector(name), x, y)
    ActionChains(browser).move_to_element_with_offset(
        drag, int(round(px - drag.size["width"] / 2)), int(round(py - drag.size["height"] / 2))).click().perform()


@pytest.mark.parametrize("figure, x, y", [("features-map", "firing_rate", "mean_activation"),
                                          ("features-modules", "module_x", "module_y")])
def test_clicking_a_feature_point_opens_its_card(server, browser, embedded_cache, figure, x, y):
    """The point a user clicks on the feature map or the co-activation graph opens that feature's card. The point
    clicked is the one farthest from every other (in the run's stored coordinates), so the point nearest the pointer
    is the one aimed at."""
    frame = pd.read_parquet(embedded_cache[1]["geneformer"] / "sae_features.parquet").query("layer == 1")
    frame = frame[frame[x].notna() & (frame[x] > 0)] if figure == "features-map" else frame[frame[x].notna()]
    points = frame[[x, y]].to_numpy(dtype=float)
    if figure == "features-map":
        points[:, 0] = np.log10(points[:, 0])                    # the map's x axis is logarithmic
    spread = np.ptp(points, axis=0)
    gaps = np.linalg.norm((points[:, None] - points[None]) / np.where(spread > 0, spread, 1), axis=2)
    np.fill_diagonal(gaps, np.inf)
    target = frame.iloc[int(np.argmax(gaps.min(axis=1)))]
    wait = WebDriverWait(browser, 120)
    browser.get(f"{server}/features")
    wait.until(lambda d: d.find_element(By.ID, "features-note").text.startswith("L1:"))
    wait.until(lambda d: trace_types(d, figure))
    click_point(browser, figure, float(target[x]), float(target[y]))
    wait.until(lambda d: d.find_element(By.ID, "features-card-title").text.startswith(
        f"L1 feature {int(target['feature'])}:"))


def test_a_feature_has_a_link_of_its_own(server, browser, embedded_cache):
    """A link to a feature opens its card (scrolled into view); a feature picked goes into the URL, and a reload
    opens that one; a link to a feature the layer lacks says so."""
    from urllib.parse import parse_qs, urlparse
    run_dir = embedded_cache[1]["geneformer"]
    live = pd.read_parquet(run_dir / "sae_features.parquet").query("layer == 0 and not dead")
    first, second = (int(f) for f in live.sort_values("firing_rate")["feature"].iloc[[-1, -2]])
    wait = WebDriverWait(browser, 120)
    browser.get(f"{server}/features?run={run_dir.name}&layer=0&feature={first}")
    wait.until(lambda d: d.find_element(By.ID, "features-card-title").text.startswith(f"L0 feature {first}:"))
    top = browser.execute_script("return document.getElementById('features-card-title').getBoundingClientRect().top")
    assert 0 <= top < browser.get_window_size()["height"]                      # the card is on screen
    cell = wait.until(lambda d: next((c for c in d.find_elements(
        By.CSS_SELECTOR, "#features-table td[data-dash-column='feature']") if c.text.strip() == str(second)), None)
        or d.execute_script("document.querySelector('#features-table .next-page').click()"))
    scroll_to(browser, cell)
    cell.click()
    wait.until(lambda d: parse_qs(urlparse(d.current_url).query).get("feature") == [str(second)])
    browser.refresh()
    wait.until(lambda d: d.find_element(By.ID, "features-card-title").text.startswith(f"L0 feature {second}:"))
    browser.get(f"{server}/features?run={run_dir.name}&layer=0&feature=99999")
    wait.until(lambda d: d.find_element(By.ID, "features-card-title").text == "L0 has no feature 99999.")
