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


def test_a_child_of_a_bounded_process_runs_at_its_own_share_and_keeps_the_users_settings(tmp_path):
    """The embedded default bounds the parent to every core, then starts one process per run bounded to its share:
    the parent's settings, inherited by the child, must not outlive the child's own bound (they did: each run's
    BLAS and scikit-learn's OpenMP ran at the parent's count, two runs oversubscribing two cores), while a
    variable the user set stays as the user set it."""
    code = """
import json, multiprocessing, os

def child(queue):
    from analysis.threads import bound_threads
    bound_threads(1)
    import numpy, sklearn.ensemble
    from threadpoolctl import threadpool_info
    numpy.ones((64, 64)) @ numpy.ones((64, 64))
    queue.put({"pools": [(p["user_api"], p["filepath"], p["num_threads"]) for p in threadpool_info()],
               "mkl": os.environ["MKL_NUM_THREADS"], "omp": os.environ["OMP_NUM_THREADS"]})

if __name__ == "__main__":
    from analysis.threads import bound_threads
    bound_threads(2)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=child, args=(queue,))
    process.start()
    print(json.dumps(queue.get()))
    process.join()
"""
    script = tmp_path / "parent.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS") and k != "OMP_WAIT_POLICY"}
    env |= {"MKL_NUM_THREADS": "3", "PYTHONPATH": str(ROOT)}
    env["SCFMX_THREAD_ENV_SET"] = "MKL_NUM_THREADS=2"      # a bound long ago set 2; the user has set 3 since
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["omp"] == "1" and got["mkl"] == "3"
    apis = {api for api, _, _ in got["pools"]}
    assert {"blas", "openmp"} <= apis
    assert all(n == 1 for _, _, n in got["pools"]), got["pools"]
