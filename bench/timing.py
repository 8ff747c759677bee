"""Interleaved timing: every candidate of a case runs in every round, in a shuffled order, and the figures are
medians of per-round ratios (so a slow moment of a shared machine hits the numerator and the denominator alike).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable


def _time_once(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def calibrate(fn: Callable[[], object], target_s: float, max_n: int = 100_000) -> int:
    """Iterations per measurement so that one measurement takes about ``target_s`` (after one warm-up call)."""
    fn()
    n = 1
    while True:
        t = _time_once(fn, n) * n
        if t >= target_s / 4 or n >= max_n:
            break
        n *= 4
    per = t / n
    return max(1, min(max_n, int(target_s / max(per, 1e-9))))


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int, target_s: float,
                seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each candidate, one entry per round, measured in a shuffled order each round."""
    rng = random.Random(seed)
    iters = {name: calibrate(fn, target_s) for name, fn in candidates.items()}
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            times[name].append(_time_once(candidates[name], iters[name]))
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> dict[str, float] | None:
    """Median, min and max over rounds of ``times[num][i] / times[den][i]``."""
    if num not in times or den not in times:
        return None
    r = [a / b for a, b in zip(times[num], times[den], strict=True)]
    return {"median": statistics.median(r), "min": min(r), "max": max(r)}
