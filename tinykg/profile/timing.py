"""Timing for benchmarks: warm-up, device synchronisation, median of repeats, same-run ratios."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1, device=None) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_ratio(fn: Callable[[], object], baseline: Callable[[], object], *, repeats: int = 5, warmup: int = 1, device=None) -> tuple[float, float, float]:
    """(ratio, t_fn, t_baseline): medians of interleaved runs, so machine noise hits both alike."""
    for _ in range(warmup):
        fn()
        baseline()
    _sync(device)
    t_fn, t_base = [], []
    for _ in range(repeats):
        for f, acc in ((baseline, t_base), (fn, t_fn)):
            start = time.perf_counter()
            f()
            _sync(device)
            acc.append(time.perf_counter() - start)
    a, b = statistics.median(t_fn), statistics.median(t_base)
    return a / b, a, b
