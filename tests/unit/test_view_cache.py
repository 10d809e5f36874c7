"""Cached views (app.view_cache) on a small real Dash app served by Flask's test client: a repeated request is
answered from memory with the callback's exact bytes and without running it; an answer is recomputed when a job
writes a result it read, when a run is added to the artifacts folder, when an export token it hands out is gone, or
when it expires, and only then; views that read no job result stay cached when a job writes; downloads, background
callbacks and failures are never cached; concurrent requests for one missing view run its callback once; the byte
bound evicts the least recently used answer."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter

import diskcache
import pytest
from dash import Dash, DiskcacheManager, Input, Output, dcc, html

from app.export import FigureExports
from app.view_cache import HEADER, JobResults, ViewCache, not_a_view


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def served(tmp_path):
    """(test client, calls per callback, JobResults, FigureExports, artifacts folder, clock, view cache)."""
    cache = diskcache.Cache(str(tmp_path / "jobs"))
    results, exports = JobResults(cache), FigureExports(cache, max_points=1000)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    clock = Clock()
    app = Dash(__name__, background_callback_manager=DiskcacheManager(cache))
    app.layout = html.Div([dcc.Input(id="x"), *(html.Div(id=name) for name in
                                                ("plain", "live", "figure", "download", "boom", "slow", "job"))])
    calls: Counter = Counter()
    view_cache = ViewCache(results, artifacts, max_bytes=64 * 1024, ttl_s=100.0, clock=clock)
    view_cache.install(app)

    @app.callback(Output("plain", "children"), Input("x", "value"))
    def plain(x):
        calls["plain"] += 1
        return f"plain {x} " + "." * 1000

    @app.callback(Output("live", "children"), Input("x", "value"))
    def live(x):
        calls["live"] += 1
        return f"live rows {results.get(('rows', x), [])}"

    @app.callback(Output("figure", "children"), Input("x", "value"))
    def figure(x):
        calls["figure"] += 1
        return exports.publish("fig", {"data": [{"type": "bar", "y": [x]}], "layout": {}}, [{"y": x}])

    @app.callback(Output("download", "children"), Input("x", "value"))
    @not_a_view
    def download(x):
        calls["download"] += 1
        return f"download {x}"

    @app.callback(Output("boom", "children"), Input("x", "value"))
    def boom(x):
        calls["boom"] += 1
        raise RuntimeError("a failing view")

    @app.callback(Output("slow", "children"), Input("x", "value"))
    def slow(x):
        calls["slow"] += 1
        time.sleep(0.5)
        return f"slow {x}"

    @app.callback(Output("job", "children"), Input("x", "value"), background=True, prevent_initial_call=True)
    def job(x):
        return f"job {x}"

    return app.server.test_client(), calls, results, exports, artifacts, clock, view_cache


def ask(client, output: str, x=1):
    body = {"output": f"{output}.children", "outputs": {"id": output, "property": "children"},
            "inputs": [{"id": "x", "property": "value", "value": x}], "state": [], "changedPropIds": ["x.value"]}
    response = client.post("/_dash-update-component", data=json.dumps(body), content_type="application/json")
    return response, response.headers.get(HEADER)


def answer(response) -> str:
    """The one output's value in a Dash callback answer."""
    return next(iter(json.loads(response.get_data())["response"].values()))["children"]


def test_a_repeated_view_is_answered_from_memory_with_the_same_bytes(served):
    client, calls, *_ = served
    first, state1 = ask(client, "plain", 1)
    second, state2 = ask(client, "plain", 1)
    other, state3 = ask(client, "plain", 2)
    assert (state1, state2, state3) == ("miss", "hit", "miss")
    assert first.status_code == second.status_code == 200 and first.get_data() == second.get_data()
    assert first.mimetype == second.mimetype == "application/json"
    assert answer(other).startswith("plain 2")
    assert calls["plain"] == 2          # the hit ran no callback


def test_a_job_writing_a_result_the_view_read_recomputes_only_that_view(served):
    client, calls, results, *_ = served
    ask(client, "live", 1), ask(client, "plain", 1)
    assert ask(client, "live", 1)[1] == "hit"
    results.set(("rows", 1), [{"delta": 0.5}])                 # a live ablation of x = 1 ended
    response, state = ask(client, "live", 1)
    assert state == "miss" and answer(response) == "live rows [{'delta': 0.5}]"
    assert ask(client, "live", 1)[1] == "hit" and ask(client, "plain", 1)[1] == "hit"
    results.set(("rows", 2), [{"delta": 1.0}])                 # a result the cached view never read
    assert ask(client, "live", 1)[1] == "hit"
    assert calls["live"] == 2 and calls["plain"] == 1


def test_a_result_missing_when_read_and_written_later_recomputes(served):
    client, _calls, results, *_ = served
    assert answer(ask(client, "live", 3)[0]) == "live rows []"
    results.set(("rows", 3), ["new"])
    assert answer(ask(client, "live", 3)[0]) == "live rows ['new']"


def test_a_run_added_to_the_artifacts_folder_recomputes_every_view(served):
    client, calls, _results, _exports, artifacts, *_ = served
    ask(client, "plain", 1)
    time.sleep(0.01)
    (artifacts / "new-run").mkdir()
    assert ask(client, "plain", 1)[1] == "miss" and calls["plain"] == 2
    assert ask(client, "plain", 1)[1] == "hit"


def test_an_export_token_gone_from_the_job_cache_recomputes_and_republishes(served):
    client, calls, results, exports, *_ = served
    token = answer(ask(client, "figure", 4)[0])
    assert exports.lookup("fig", token)[1]["y"].tolist() == [4]
    assert ask(client, "figure", 4)[1] == "hit"
    results.cache.delete(("export", token))                    # culled past the cache's size limit
    response, state = ask(client, "figure", 4)
    assert state == "miss" and answer(response) == token and calls["figure"] == 2
    assert exports.lookup("fig", token)[1]["y"].tolist() == [4]   # exportable again


def test_an_entry_expires_after_its_lifetime(served):
    client, calls, _results, _exports, _artifacts, clock, _vc = served
    ask(client, "plain", 1)
    clock.now += 99
    assert ask(client, "plain", 1)[1] == "hit"
    clock.now += 2
    assert ask(client, "plain", 1)[1] == "miss" and calls["plain"] == 2


def test_downloads_background_jobs_and_failures_are_not_cached(served):
    client, calls, *_, view_cache = served
    for _ in range(2):
        response, state = ask(client, "download", 1)
        assert response.status_code == 200 and state is None
    assert calls["download"] == 2
    assert not view_cache.cacheable("job.children") and view_cache.cacheable("plain.children")
    assert not view_cache.cacheable("no-such.children")
    for _ in range(2):
        response, state = ask(client, "boom", 1)
        assert response.status_code == 500 and state == "miss"
    assert calls["boom"] == 2


def test_concurrent_requests_for_one_missing_view_run_it_once(served):
    client, calls, *_ = served
    clients = [client.application.test_client() for _ in range(4)]
    outcomes = []

    def request(c):
        response, state = ask(c, "slow", 7)
        outcomes.append((response.get_data(), state))

    threads = [threading.Thread(target=request, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls["slow"] == 1
    assert sorted(state for _, state in outcomes) == ["hit", "hit", "hit", "miss"]
    assert len({body for body, _ in outcomes}) == 1


def test_the_byte_bound_evicts_the_least_recently_used(served):
    client, calls, *_, view_cache = served
    for x in range(100):                # each answer ~1.1 kB; the bound is 64 kB
        ask(client, "plain", x)
    assert 0 < view_cache.nbytes <= view_cache.max_bytes
    assert ask(client, "plain", 99)[1] == "hit"
    assert ask(client, "plain", 0)[1] == "miss"
