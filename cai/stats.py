"""Small statistics helpers for reports: 95 % intervals for proportions and means."""

from __future__ import annotations

import math
import random
from statistics import fmean
from typing import Callable, Sequence


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; (0, 1) when n is 0."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_ci(values: Sequence[float], stat: Callable[[Sequence[float]], float] = fmean,
                 n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat` over `values` (deterministic for a seed)."""
    values = list(values)
    if not values:
        return (float("nan"), float("nan"))
    if len(values) == 1:
        return (float(stat(values)), float(stat(values)))
    rng = random.Random(seed)
    stats = sorted(stat([values[rng.randrange(len(values))] for _ in values]) for _ in range(n))
    lo = stats[int((1 - level) / 2 * (n - 1))]
    hi = stats[int((1 + level) / 2 * (n - 1))]
    return (float(lo), float(hi))


def proportion(k: int, n: int) -> dict:
    """A proportion as the audit reports it: value, n and its Wilson interval."""
    lo, hi = wilson(k, n)
    return {"value": k / n if n else None, "k": k, "n": n, "ci95": [lo, hi], "interval": "wilson"}


def mean_figure(values: Sequence[float | None], stat: Callable[[Sequence], float] = fmean, seed: int = 0) -> dict:
    """A mean-like statistic with its bootstrap interval; None values (unmeasured) are left out."""
    values = [v for v in values if v is not None]
    if not values:
        return {"value": None, "n": 0, "ci95": [None, None], "interval": "bootstrap"}
    lo, hi = bootstrap_ci(values, stat, seed=seed)
    return {"value": stat(values), "n": len(values), "ci95": [lo, hi], "interval": "bootstrap"}
