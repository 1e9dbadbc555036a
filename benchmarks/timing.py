"""Timing shared by the benchmark scripts: interleaved runs, median wall and CPU seconds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def measure(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each run after one warm-up each.

    Runs are interleaved round by round, so drifts of the machine (clock speed, caches,
    other processes) hit every run alike instead of whichever ran first. CPU time (all
    threads of this process) is the steadier number on a shared machine.
    """
    for run in runs.values():
        run()  # warm-up: allocator, thread pools, lazy imports
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in runs}


def interleaved(runs: dict[str, Callable[[], Any]], repeats: int, clock: Callable[[], float]) -> dict[str, list[float]]:
    """Every time of each run (``clock`` seconds) after one warm-up each, runs interleaved round by round."""
    for run in runs.values():
        run()
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            start = clock()
            run()
            seconds[key].append(clock() - start)
    return seconds
