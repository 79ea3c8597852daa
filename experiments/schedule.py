"""How a comparison's runs share the machine: how many train at a time, on how many torch threads each, and which
start first."""

from __future__ import annotations

import os

from models import get_arm


def slowest_first(arm: str) -> tuple[float, bool]:
    """Sort key of a setting's arms: the runs that take longest on a CPU first (the families of the higher
    `cpu_step_cost` first, sparse before dense: benchmarks/README.md), so that parallel runs end together instead of
    one core waiting for the last long run."""
    return -get_arm(arm).family.cpu_step_cost, not get_arm(arm).is_sparse


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def schedule(parallel: str, accelerator: str, devices, strategy: str | None) -> tuple[int, int | None]:
    """--parallel -> (runs at a time, torch threads per run on the CPU).

    "auto" on the CPU (one device, no strategy) is one single-threaded run per core: a tiny run gains little from a
    second thread, so runs side by side finish the matrix sooner (benchmarks/README.md measures it). The
    training is bit-identical on any number of threads (tests/test_compare.py), so the schedule never changes a
    result. "auto" anywhere else is one run at a time; K > 1 on GPUs gives each run its own GPU.
    """
    on_cpu = accelerator == "cpu" and devices in (None, 1) and strategy is None
    if parallel == "auto":
        count = cpu_cores() if on_cpu else 1
    elif parallel.isdigit() and int(parallel) >= 1:
        count = int(parallel)
    else:
        raise ValueError(f"--parallel must be 'auto' or a count >= 1; got {parallel!r}")
    return count, max(1, cpu_cores() // count) if on_cpu else None
