"""The app's cached views on the embedded run (app.view_cache inside create_app): a cached answer is byte-for-byte
the answer of an app that caches nothing; a live ablation's result, written into the job cache as the app's job
writes it, reaches the Ablation page's dose-response and table at the next request while the Overview stays cached;
the export token of a cached answer exports."""
from __future__ import annotations

import json
import shutil

import pytest

from app import ids
from app.job_cache import open_job_cache
from app.main import create_app
from app.pages.ablation import LIVE_INDEX
from app.settings import AppSettings
from app.view_cache import HEADER, JobResults


def _key(component) -> str:
    return json.dumps(component, sort_keys=True, separators=(",", ":")) if isinstance(component, dict) else component


def _output(deps: list[dict], marker: str) -> str:
    """The output key of the callback whose outputs name ``marker``."""
    return next(d["output"] for d in deps if marker in d["output"])


def _body(deps: list[dict], marker: str, outputs: list[tuple], inputs: list[tuple]) -> str:
    """A callback request as the browser sends it: the callback whose output names ``marker``, its outputs
    ``(id, property)`` and inputs ``(id, property, value)``."""
    return json.dumps({"output": _output(deps, marker), "outputs": [{"id": i, "property": p} for i, p in outputs],
                       "inputs": [{"id": i, "property": p, "value": v} for i, p, v in inputs], "state": [],
                       "changedPropIds": [f"{_key(inputs[0][0])}.{inputs[0][1]}"]})


@pytest.fixture
def apps(embedded_cache, tmp_path):
    """(client with cached views, client caching nothing, run id, cache dir) over a copy of the Geneformer run."""
    cache, runs = embedded_cache
    run = runs["geneformer"]
    shutil.copytree(run, tmp_path / "cache" / "artifacts" / run.name)
    made = [create_app(AppSettings(cache_dir=tmp_path / "cache")),
            create_app(AppSettings(cache_dir=tmp_path / "cache", view_cache_mib=0))]
    yield made[0].server.test_client(), made[1].server.test_client(), run.name, tmp_path / "cache"
    for app in made:
        app._background_manager.stop_launcher()


def _post(client, body: str):
    response = client.post("/_dash-update-component", data=body, content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return response


def test_cached_answers_equal_uncached_ones_and_follow_live_ablations(apps):
    cached, uncached, run_id, cache_dir = apps
    deps = cached.get("/_dash-dependencies").get_json()
    overview = _body(deps, ids.OVERVIEW_SUMMARY,
                     [(ids.OVERVIEW_SUMMARY, "children"), (ids.graph("overview-layer-profile"), "figure"),
                      (ids.figdata("overview-layer-profile"), "data"), (ids.OVERVIEW_BEST, "data")],
                     [(ids.RUN_SELECT, "value", run_id)])
    ablation = _body(deps, "\"figure\":\"abl-fidelity\"",
                     [(ids.graph("abl-dose"), "figure"), (ids.figdata("abl-dose"), "data"),
                      (ids.graph("abl-fidelity"), "figure"), (ids.figdata("abl-fidelity"), "data")],
                     [(ids.RUN_SELECT, "value", run_id), (ids.ABL_READOUT, "value", "mlm_loss"),
                      (ids.ABL_FAMILIES, "value", ["top_k", "random_k", "bottom_k", "custom"]),
                      (ids.ABL_LIVE_VERSION, "data", 0)])
    results = _body(deps, ids.ABL_FILTER_STATUS, [(ids.ABL_TABLE, "data"), (ids.ABL_FILTER_STATUS, "children")],
                    [(ids.RUN_SELECT, "value", run_id), (ids.ABL_LIVE_VERSION, "data", 0),
                     (ids.ABL_TABLE, "filter_query", "")])
    for body in (overview, ablation, results):
        first, second, plain = _post(cached, body), _post(cached, body), _post(uncached, body)
        assert (first.headers[HEADER], second.headers[HEADER]) == ("miss", "hit")
        assert HEADER not in plain.headers
        assert first.get_data() == second.get_data() == plain.get_data()

    table = _key(ids.ABL_TABLE)
    before = json.loads(_post(cached, results).get_data())["response"][table]["data"]
    figure_before = _post(cached, ablation).get_data()
    row = dict(before[0], intervention="zero_head@L1[1]", family="custom", k=1, draw=-1, readout="mlm_loss", n=7,
               value=123.0, delta=0.5, structural=False)
    jobs = JobResults(open_job_cache(cache_dir))   # the job's own handle, as in a worker
    jobs.set((LIVE_INDEX, run_id), [row])
    for body in (ablation, results):
        after = _post(cached, body)
        assert after.headers[HEADER] == "miss"
        assert after.get_data() == _post(uncached, body).get_data()
    rows = json.loads(_post(cached, results).get_data())["response"][table]["data"]
    assert len(rows) == len(before) + 1 and rows[0]["value"] == 123.0         # the live row comes first
    assert _post(cached, ablation).get_data() != figure_before
    assert "zero_head@L1[1]" in _post(cached, ablation).get_data(as_text=True)
    assert _post(cached, overview).headers[HEADER] == "hit"       # it reads no job result

    store = _key(ids.figdata("overview-layer-profile"))
    token = json.loads(_post(cached, overview).get_data())["response"][store]["data"]
    buttons = [{"id": ids.export_button("overview-layer-profile", f), "property": "n_clicks", "value": int(f == "csv")}
               for f in ("png", "svg", "pdf", "html", "csv", "zip")]
    body = json.dumps({"output": _output(deps, "export-dl"),
                       "outputs": [{"id": ids.download("overview-layer-profile"), "property": "data"},
                                   {"id": ids.export_status("overview-layer-profile"), "property": "children"}],
                       "inputs": [buttons],
                       "state": [{"id": ids.figdata("overview-layer-profile"), "property": "data", "value": token}],
                       "changedPropIds": [f"{_key(ids.export_button('overview-layer-profile', 'csv'))}.n_clicks"]})
    response = _post(cached, body)
    assert HEADER not in response.headers                        # a download is never a cached view
    download = json.loads(response.get_data())["response"][_key(ids.download("overview-layer-profile"))]["data"]
    assert download["filename"].endswith(".csv") and download["content"]
