"""The export path as a hostile client would try it, against the running app (qa/bad-inputs.md, Security): crafted
callback requests that carry a figure (a local-file image, a local URL) or a token the server never issued are
refused without rendering anything; the token of a figure the server drew exports; an unknown Host header is
refused (DNS rebinding). Plain HTTP requests, no browser: this is what a script would send."""
from __future__ import annotations

import base64
import json

import requests

from analysis.io.artifacts import read_manifest

FIGURE = "overview-layer-profile"
FORMATS = ("png", "svg", "pdf", "html", "csv", "zip")


def _prop_id(component: dict | str, prop: str) -> str:
    cid = json.dumps(component, sort_keys=True, separators=(",", ":")) if isinstance(component, dict) else component
    return f"{cid}.{prop}"


def _export(server: str, deps: list[dict], figdata, fmt: str = "png"):
    buttons = [{"id": {"figure": FIGURE, "fmt": f, "type": "export-btn"}, "property": "n_clicks",
                "value": int(f == fmt)} for f in FORMATS]
    output = next(d["output"] for d in deps if "export-dl" in d["output"])
    body = {"output": output,
            "outputs": [{"id": {"figure": FIGURE, "type": "export-dl"}, "property": "data"},
                        {"id": {"figure": FIGURE, "type": "export-status"}, "property": "children"}],
            "inputs": [buttons],
            "state": [{"id": {"figure": FIGURE, "type": "figdata"}, "property": "data", "value": figdata}],
            "changedPropIds": [_prop_id({"figure": FIGURE, "fmt": fmt, "type": "export-btn"}, "n_clicks")]}
    return requests.post(f"{server}/_dash-update-component", json=body, timeout=120)


def _outputs(response) -> tuple:
    assert response.status_code == 200, response.text[:500]
    out = response.json()["response"]
    return (out.get(json.dumps({"figure": FIGURE, "type": "export-dl"}, separators=(",", ":"), sort_keys=True), {}),
            out.get(json.dumps({"figure": FIGURE, "type": "export-status"}, separators=(",", ":"), sort_keys=True), {}))


def _overview_token(server: str, deps: list[dict], run_id: str) -> str:
    output = next(d["output"] for d in deps if "overview-summary" in d["output"])
    graph, store = ({"figure": FIGURE, "type": t} for t in ("graph", "figdata"))
    body = {"output": output,
            "outputs": [{"id": "overview-summary", "property": "children"}, {"id": graph, "property": "figure"},
                        {"id": store, "property": "data"}, {"id": "overview-best-heads", "property": "data"}],
            "inputs": [{"id": "app-run-select", "property": "value", "value": run_id}], "state": [],
            "changedPropIds": ["app-run-select.value"]}
    r = requests.post(f"{server}/_dash-update-component", json=body, timeout=60)
    assert r.status_code == 200, r.text[:500]
    token = r.json()["response"][json.dumps(store, separators=(",", ":"), sort_keys=True)]["data"]
    assert isinstance(token, str) and len(token) == 32
    return token


def test_crafted_figures_and_foreign_tokens_are_refused(server, tmp_path):
    deps = requests.get(f"{server}/_dash-dependencies", timeout=30).json()
    secret = tmp_path / "secret.png"
    secret.write_bytes(base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="))
    crafted = {"data": [{"type": "scatter", "x": [0, 1], "y": [0, 1]}],
               "layout": {"images": [{"source": f"file://{secret}", "xref": "paper", "yref": "paper", "x": 0, "y": 1,
                                      "sizex": 1, "sizey": 1},
                                     {"source": f"{server}/_dash-layout", "xref": "paper", "yref": "paper"}]}}
    for figdata in (crafted, [crafted], "0" * 32, None):
        download, status = _outputs(_export(server, deps, figdata))
        assert not download.get("data"), "a figure the server did not draw was rendered"
        assert "Export refused" in status["children"] and "not one the server drew" in status["children"]


def test_a_figure_the_server_drew_exports_by_its_token(server, embedded_cache):
    deps = requests.get(f"{server}/_dash-dependencies", timeout=30).json()
    run_id = embedded_cache[1]["scgpt"].name
    token = _overview_token(server, deps, run_id)
    download, status = _outputs(_export(server, deps, token, fmt="csv"))   # the token names its run
    assert status["children"] == ""
    assert download["data"]["filename"] == f"{FIGURE}_scgpt_{run_id}.csv"
    text = base64.b64decode(download["data"]["content"]).decode() if download["data"].get("base64") \
        else download["data"]["content"]
    n_layers = read_manifest(embedded_cache[1]["scgpt"]).model.n_layers
    assert text.splitlines()[0] == "layer,best_head,median_head,layer_mean,spearman,chance"   # the plotted series
    assert len(text.splitlines()) == 1 + n_layers


def test_unknown_host_header_is_refused(server):
    assert requests.get(server, timeout=30).status_code == 200
    for host in ("evil.example", "evil.example:80", "127.0.0.1.nip.io"):
        r = requests.get(server, headers={"Host": host}, timeout=30)
        assert r.status_code == 421 and "not served here" in r.text


def test_an_oversized_request_body_is_refused_unread(server):
    """A callback request larger than the app's bound (``max_request_mib``, 32 MiB) is answered 413; a 200 MB body
    used to be accepted and parsed."""
    body = b'{"output": "x", "inputs": [], "state": [], "pad": "' + b"a" * (33 * 1024 ** 2) + b'"}'
    r = requests.post(f"{server}/_dash-update-component", data=body, headers={"Content-Type": "application/json"},
                      timeout=120)
    assert r.status_code == 413
