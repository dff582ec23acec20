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


def _paired(a: Sequence, b: Sequence) -> list[tuple]:
    """The (a, b) pairs both measured: a prompt one arm has no value for drops out of both."""
    if len(a) != len(b):
        raise ValueError(f"paired values need one per item in each arm, got {len(a)} and {len(b)}")
    return [(x, y) for x, y in zip(a, b) if x is not None and y is not None]


def paired_difference(a: Sequence[float | None], b: Sequence[float | None], n: int = 1000, seed: int = 0) -> dict:
    """mean(a) - mean(b) over items measured in both arms, with a paired bootstrap interval.

    Resampling item indices and taking the same indices in both arms is resampling the
    per-item differences: what both arms share (an easy prompt, a long one) cancels, so the
    interval is as wide as the arms' disagreement, not their spread across items."""
    diffs = [x - y for x, y in _paired(a, b)]
    if not diffs:
        return {"value": None, "n": 0, "ci95": [None, None], "interval": "paired bootstrap"}
    lo, hi = bootstrap_ci(diffs, n=n, seed=seed)
    return {"value": fmean(diffs), "n": len(diffs), "ci95": [lo, hi], "interval": "paired bootstrap"}


def newcombe_paired(both: int, only_a: int, only_b: int, neither: int, z: float = 1.96) -> tuple[float, float]:
    """Interval for P(a) - P(b) from a paired 2x2 table: Newcombe's (1998) method 10, the two
    marginal Wilson intervals combined with the pairs' correlation (continuity-corrected phi).
    Unlike the Wald/McNemar interval it stays honest with few or no discordant pairs."""
    n = both + only_a + only_b + neither
    if n == 0:
        return (-1.0, 1.0)
    a_yes, a_no, b_yes, b_no = both + only_a, only_b + neither, both + only_b, only_a + neither
    p1, p2 = a_yes / n, b_yes / n
    l1, u1 = wilson(a_yes, n, z)
    l2, u2 = wilson(b_yes, n, z)
    phi = 0.0
    if min(a_yes, a_no, b_yes, b_no) > 0:
        cross = both * neither - only_a * only_b
        corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
        phi = corrected / math.sqrt(a_yes * a_no * b_yes * b_no)
    d = p1 - p2
    lo = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = d + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return (max(-1.0, lo), min(1.0, hi))


def paired_proportion_difference(a: Sequence[bool | None], b: Sequence[bool | None]) -> dict:
    """Rate of a minus rate of b on the same items (e.g. trained vs baseline refusals per prompt),
    with Newcombe's paired interval; items measured in only one arm drop out of both."""
    pairs = [(bool(x), bool(y)) for x, y in _paired(a, b)]
    both = sum(x and y for x, y in pairs)
    only_a = sum(x and not y for x, y in pairs)
    only_b = sum(y and not x for x, y in pairs)
    n = len(pairs)
    if not n:
        return {"value": None, "n": 0, "ci95": [None, None], "interval": "newcombe paired"}
    lo, hi = newcombe_paired(both, only_a, only_b, n - both - only_a - only_b)
    return {"value": (only_a - only_b) / n, "n": n, "ci95": [lo, hi], "interval": "newcombe paired",
            "only_a": only_a, "only_b": only_b}


def cluster_bootstrap_ci(values: Sequence, clusters: Sequence, stat: Callable[[Sequence], float] | None = None,
                         n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval resampling whole clusters, not single values.

    Values in one cluster (one probe's principles and orders, probes sharing an
    answer) are not independent: resampling them one by one gives intervals
    that are too narrow. `stat` None is the pooled mean, computed from cluster
    sums (fast). None when there are fewer than two clusters: nothing to resample.
    """
    groups: dict = {}
    for v, c in zip(values, clusters):
        groups.setdefault(c, []).append(v)
    keys = list(groups)
    if len(keys) < 2:
        return None
    rng = random.Random(seed)
    draws = ([keys[rng.randrange(len(keys))] for _ in keys] for _ in range(n))
    if stat is None:
        sums = {c: (math.fsum(g), len(g)) for c, g in groups.items()}
        stats = sorted(sum(sums[c][0] for c in d) / sum(sums[c][1] for c in d) for d in draws)
    else:
        stats = sorted(stat([v for c in d for v in groups[c]]) for d in draws)
    return (float(stats[int((1 - level) / 2 * (n - 1))]), float(stats[int((1 + level) / 2 * (n - 1))]))


def cluster_proportion(hits: Sequence[bool], clusters: Sequence, ties: int = 0) -> dict:
    """A share over decided units with a cluster-bootstrap interval, widened to at least the Wilson
    interval that counts each cluster once (the bootstrap alone says [1, 1] when every cluster agrees)."""
    n, k = len(hits), sum(bool(h) for h in hits)
    c = len(set(clusters))
    fig = {"value": k / n if n else None, "k": k, "n": n, "ties": ties, "clusters": c,
           "ci95": [None, None], "interval": "cluster_bootstrap"}
    if n:
        lo, hi = wilson(round(k / n * c), c)
        boot = cluster_bootstrap_ci([float(h) for h in hits], clusters)
        if boot:
            lo, hi = min(lo, boot[0]), max(hi, boot[1])
        fig["ci95"] = [min(lo, k / n), max(hi, k / n)]
    return fig


def cluster_mean(values: Sequence, clusters: Sequence, stat: Callable[[Sequence], float] | None = None,
                 ties: int | None = None) -> dict:
    """A mean-like statistic with its cluster-bootstrap interval (None below two clusters)."""
    fig = {"value": None, "n": len(values), "clusters": len(set(clusters)), "ci95": [None, None],
           "interval": "cluster_bootstrap"}
    if ties is not None:
        fig["ties"] = ties
    if values:
        fig["value"] = float(stat(values)) if stat else math.fsum(values) / len(values)
        boot = cluster_bootstrap_ci(values, clusters, stat)
        if boot:
            fig["ci95"] = [min(boot[0], fig["value"]), max(boot[1], fig["value"])]
    return fig
