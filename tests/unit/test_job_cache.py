"""The app's job cache holds data only: what the app writes round-trips as JSON, and a pickle planted in the cache's
directory is refused before it is unpickled (it used to run when a page read it)."""
import os

import diskcache
import numpy as np
import plotly.graph_objects as go
import pytest

from app.job_cache import UntrustedEntry, open_job_cache


class Payload:
    """Unpickling this makes a directory: proof that code from the cache ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_job_outputs_round_trip_as_json(tmp_path):
    with open_job_cache(tmp_path) as cache:
        fig = go.Figure(go.Heatmap(z=np.arange(6.0).reshape(2, 3)))
        cache.set("result-key", [fig, "status", np.float32(0.5)])
        cache.set(("export", "token"), ("heads", "{}", "{}"))
        got = cache.get("result-key")
        assert got[0]["data"][0]["type"] == "heatmap" and got[1:] == ["status", 0.5]
        assert go.Figure(got[0]).data[0].z is not None           # Dash takes the dict as the figure
        assert cache.get(("export", "token")) == ["heads", "{}", "{}"]


@pytest.mark.parametrize("where", ["value", "key"])
def test_a_planted_pickle_is_refused_unread(tmp_path, where):
    marker = tmp_path / "code-ran"
    with open_job_cache(tmp_path) as cache:
        cache.set("result-key", "a job's output")
        key_bytes = cache.disk.put("result-key")[0]
        directory = cache.directory
    with diskcache.Cache(directory) as planter:          # diskcache's default Disk: pickles
        if where == "value":
            planter.set(bytes(key_bytes), Payload(str(marker)))    # the key the app reads, a pickled value
        else:
            planter.set((Payload(str(marker)),), "x")              # a pickled key, met when keys are listed
    with open_job_cache(tmp_path) as cache, pytest.raises(UntrustedEntry, match="never writes"):
        if where == "value":
            cache.get("result-key")
        else:
            list(cache.iterkeys())
    assert not marker.exists()
