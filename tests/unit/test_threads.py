"""Thread bounds: the cgroup quota and CPU affinity give the usable cores, and a bounded process runs every pool it
loaded (BLAS, OpenMP, torch) at the bound, with OpenMP told not to spin. Checked in a fresh interpreter, as
precompute starts, since the bound is process-wide."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.threads import cgroup_cpu_limit, usable_cores

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text, expected", [("max 100000\n", None), ("150000 100000\n", 1.5),
                                            ("200000 100000", 2.0), ("garbage", None)])
def test_cgroup_quota(tmp_path, text, expected):
    f = tmp_path / "cpu.max"
    f.write_text(text)
    assert cgroup_cpu_limit(f) == expected
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_usable_cores_within_affinity():
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("bound", [1, 2])
def test_a_bounded_process_runs_every_pool_at_the_bound(bound):
    code = f"""
import json, os
from analysis.threads import bound_threads
n = bound_threads({bound})
import numpy, sklearn.ensemble, torch
from threadpoolctl import threadpool_info
numpy.ones((64, 64)) @ numpy.ones((64, 64))
print(json.dumps({{"n": n, "torch": torch.get_num_threads(), "wait": os.environ["OMP_WAIT_POLICY"],
                  "pools": [(p["user_api"], p["num_threads"]) for p in threadpool_info()]}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS") and k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["n"] == bound and got["torch"] == bound and got["wait"] == "PASSIVE"
    apis = {api for api, _ in got["pools"]}
    assert {"blas", "openmp"} <= apis
    assert all(n == bound for _, n in got["pools"]), got["pools"]
