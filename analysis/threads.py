"""Every thread pool of a process bounded to the cores the job may use.

numpy's BLAS, the OpenMP runtimes (scikit-learn's and torch's libgomp) and torch's intra-op pool each start one
thread per core they see by default, and OpenMP threads busy-wait at every barrier. On a machine whose cores are
shared (other jobs, the test suite's own servers and browsers), a thread that is descheduled holds up its whole
team while the others spin: scikit-learn's HistGradientBoosting was seen taking 2,043 s instead of 46 s. So a job
sets, before the libraries start their pools, how many threads each may run (:func:`bound_threads`): the cores this
process may run on (CPU affinity and the cgroup's CPU quota, :func:`usable_cores`) unless told fewer, and makes
OpenMP threads sleep rather than spin when they wait (``OMP_WAIT_POLICY=PASSIVE``). Environment settings the user
made are kept; those an earlier bound made (a parent process's, inherited by the processes it starts) are not: a
child bounded to its share of the cores (the embedded default's one process per run) sets its own.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
              "NUMEXPR_NUM_THREADS")
SET_BY_BOUND = "SCFMX_THREAD_ENV_SET"   # what :func:`bound_threads` set (not the user): NAME=value, comma-separated


def cgroup_cpu_limit(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """CPUs allowed by the cgroup v2 quota (``quota period`` in ``cpu.max``), None when unlimited or unknown."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup's CPU quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def bound_threads(n_threads: int | None = None) -> int:
    """Bound BLAS, OpenMP and torch to ``n_threads`` (default :func:`usable_cores`) for the rest of the process and
    return the bound. Call it first thing, before numpy, scikit-learn or torch have run: the environment variables
    only reach libraries loaded after them (torch's intra-op pool reads ``OMP_NUM_THREADS`` when torch loads); the
    pools already loaded are limited through threadpoolctl and, when torch is loaded, ``torch.set_num_threads``
    (torch is not loaded for this: a process that only starts others never needs it; torch's inter-op pool starts
    only for ``torch.jit.fork`` work, which nothing here does)."""
    n = max(1, int(n_threads or usable_cores()))
    ours = dict(item.split("=", 1) for item in os.environ.get(SET_BY_BOUND, "").split(",") if "=" in item)
    settings = {name: str(n) for name in THREAD_ENV} | {"OMP_WAIT_POLICY": "PASSIVE"}
    for name, value in settings.items():
        if name not in os.environ or ours.get(name) == os.environ[name]:   # unset, or still as a bound left it
            os.environ[name] = value
            ours[name] = value
        else:
            ours.pop(name, None)
    os.environ[SET_BY_BOUND] = ",".join(f"{name}={value}" for name, value in sorted(ours.items()))
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    return n
