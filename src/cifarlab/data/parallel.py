"""Spread per-image work over the CPU cores, without pickling images between processes.

Workers are forked after the caller has the data in memory, so they share it copy-on-write
and receive only index ranges. Where fork is unavailable (Windows, macOS defaults) or one
core is all there is, the work runs in-process: same results, just slower.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
_TASK: Callable | None = None


def _run(bounds):
    assert _TASK is not None, "map_ranges sets the task before any worker runs"
    return _TASK(*bounds)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def map_ranges(task: Callable[[int, int], T], n: int, workers: int = 0, chunks_per_worker: int = 4) -> list[T]:
    """Call task(start, stop) over [0, n) in chunks, in parallel where fork allows; results in order."""
    global _TASK
    workers = workers or cpu_count()
    if n == 0:
        return []
    if workers <= 1 or n < 256 or "fork" not in mp.get_all_start_methods():
        return [task(0, n)]
    parts = min(n, workers * chunks_per_worker)
    bounds = [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]
    _TASK = task
    try:
        with mp.get_context("fork").Pool(workers) as pool:
            return pool.map(_run, bounds, chunksize=1)
    finally:
        _TASK = None
