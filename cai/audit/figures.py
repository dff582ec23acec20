"""Bias figures from judge verdicts, each raw (one order, one principle) and mitigated.

`raw` reads what a plain judge gives: the first principle drawn, the pair in
the order shown. `mitigated` reads our label: both orders averaged over the
principle ensemble, as `--feedback` labels. A Target pairs a verdict with
whether its `a` answer is the one the figure asks about (the better, longer,
padded, list-formatted...). Ties (|p - 0.5| under the tie threshold, or two
equal texts) are counted apart, never as losses. Intervals resample clusters
of probes (cai.stats.cluster_*), since one probe's principles and orders, and
probes sharing an answer, are not independent.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean

from cai.judge import Comparison, Verdict
from cai.stats import cluster_mean, cluster_proportion, paired_proportion_difference

MODES = ("raw", "mitigated")


@dataclass
class Target:
    verdict: Verdict | None  # None: the two texts are equal, nothing to judge (a tie)
    a_is_target: bool  # the target is `a`: shown first in the raw order
    item: Comparison
    cluster: str
    tie_threshold: float = 0.0

    def is_tie(self, p: float) -> bool:
        return abs(p - 0.5) < self.tie_threshold or p == 0.5

    def p_order(self, target_first: bool, principle: int | None = None) -> float | None:
        """P(target better) with the target shown as (A) if `target_first`, else as (B);
        one principle's (by index) or the ensemble's. The same meaning whichever answer wins."""
        v = self.verdict
        if v is None:
            return 0.5
        src = v.per_principle[principle] if principle is not None else {"p_first": v.p_first, "p_second": v.p_second}
        # Verdicts give P(a better) with a shown as (A) (p_first) or as (B) (p_second).
        p_a = src.get("p_first" if target_first == self.a_is_target else "p_second")
        return None if p_a is None else p_a if self.a_is_target else 1 - p_a

    def p(self, mode: str) -> float | None:
        """P(the target answer is judged better): raw = first principle in the order shown; mitigated = our label."""
        v = self.verdict
        if v is None:
            return 0.5
        if mode == "raw":
            return self.p_order(self.a_is_target, 0) if v.per_principle else None
        return None if v.p_a is None else v.p_a if self.a_is_target else 1 - v.p_a

    def outcome(self, mode: str) -> str | None:
        p = self.p(mode)
        return None if p is None else "tie" if self.is_tie(p) else "win" if p > 0.5 else "loss"


def share(targets: list[Target], mode: str) -> dict:
    """Share of decided comparisons won by the target (0.5 = indifferent); ties counted apart."""
    decided = [(t.outcome(mode) == "win", t.cluster) for t in targets if t.outcome(mode) in ("win", "loss")]
    ties = sum(t.outcome(mode) == "tie" for t in targets)
    return cluster_proportion([w for w, _ in decided], [c for _, c in decided], ties)


def share_difference(a: list[Target], b: list[Target], mode: str) -> dict:
    """Share won by the target under one judge (`a`) minus under another (`b`), paired: a[i] and b[i] are the
    same comparison. Pairs tied or unusable under either judge are left out (ties counted apart); Newcombe's
    paired interval (each comparison its own cluster)."""
    outs = [(x.outcome(mode), y.outcome(mode)) for x, y in zip(a, b, strict=True)]
    won = lambda o: o == "win" if o in ("win", "loss") else None  # noqa: E731
    fig = paired_proportion_difference([won(x) for x, _ in outs], [won(y) for _, y in outs])
    return {**fig, "ties": sum("tie" in pair for pair in outs)}


def both_modes(fn, *args) -> dict:
    return {mode: fn(*args, mode) for mode in MODES}


def _agreement(t: Target, first: float | None, second: float | None) -> bool | str | None:
    """Whether a comparison's two orders pick the same answer; "tie" when either is a tie; None when
    an order has no usable label."""
    if first is None or second is None:
        return None
    if t.is_tie(first) or t.is_tie(second):
        return "tie"
    return (first > 0.5) == (second > 0.5)


def _agreement_share(outcomes: list[tuple[bool | str | None, str]], agree: bool = True) -> dict:
    """Share of decided comparisons whose orders agree (or, agree=False, flip), by cluster; ties apart."""
    decided = [(o, c) for o, c in outcomes if isinstance(o, bool)]
    return cluster_proportion([o == agree for o, _ in decided], [c for _, c in decided],
                              sum(o == "tie" for o, _ in outcomes))


def position(targets: list[Target]) -> dict:
    """Raw: per (comparison, principle), do the two orders pick the same answer, and how often is the
    first-shown one picked? Mitigated: the same after the principle ensemble, per order."""
    pairs, singles, single_ties = [], [], 0
    for t in targets:
        if t.verdict is None:
            continue
        for i in range(len(t.verdict.per_principle)):
            first, second = t.p_order(True, i), t.p_order(False, i)  # P(target better), target shown (A) / (B)
            for p, shown_first in ((first, True), (second, False)):
                if p is not None and t.is_tie(p):
                    single_ties += 1
                elif p is not None:
                    singles.append(((p > 0.5) == shown_first, t.cluster))
            pairs.append((_agreement(t, first, second), t.cluster))
    ens = [(_agreement(t, t.p_order(True), t.p_order(False)), t.cluster) for t in targets if t.verdict]
    return {
        "raw": {"consistency": _agreement_share(pairs),
                "primacy_share": cluster_proportion([f for f, _ in singles], [c for _, c in singles], single_ties),
                "flip_rate": _agreement_share(pairs, agree=False)},
        # Averaging the two orders then makes the label order-invariant by construction: the point of swap-and-average.
        "mitigated": {"consistency": _agreement_share(ens), "swap_averaged_order_invariant": True},
    }


def shift(pairs: list[tuple[Target, Target]], mode: str, sign: float = 1.0) -> dict:
    """Mean change in P(target better) from each pair's first comparison to its second (`sign` -1: the
    change in P(the other answer better)). Both copies are shown in the same order, so this is the edit's effect."""
    kept = [(sign * (b.p(mode) - a.p(mode)), a.cluster) for a, b in pairs
            if a.p(mode) is not None and b.p(mode) is not None]
    return cluster_mean([d for d, _ in kept], [c for _, c in kept])


def agreement(pairs: list[tuple[Target, Target]], mode: str) -> dict:
    """Share of pairs whose two comparisons pick the same winner; a pair with a tie on either side is a tie."""
    outs = [(a.outcome(mode), b.outcome(mode), a.cluster) for a, b in pairs]
    decided = [(x == y, c) for x, y, c in outs if x in ("win", "loss") and y in ("win", "loss")]
    ties = sum("tie" in (x, y) for x, y, _ in outs)
    return cluster_proportion([s for s, _ in decided], [c for _, c in decided], ties)


def _ece(items: list[tuple[float, bool]]) -> float:
    bins: dict[int, list[tuple[float, bool]]] = {}
    for p, y in items:
        conf = max(p, 1 - p)
        bins.setdefault(min(int((conf - 0.5) * 20), 9), []).append((conf, (p > 0.5) == y))
    return sum(len(b) / len(items) * abs(fmean(c for c, _ in b) - fmean(ok for _, ok in b)) for b in bins.values())


def calibration(targets: list[Target], mode: str) -> dict:
    """Targets are the known better answers. Scores P(answer `a` is better) against whether it is:
    ECE over 10 confidence bins, Brier, mean confidence, reliability bins. Probabilities, not verdicts,
    so ties stay in."""
    items = [(t.p(mode) if t.a_is_target else 1 - t.p(mode), t.a_is_target, t.cluster) for t in targets
             if t.p(mode) is not None]
    pys, clusters = [(p, y) for p, y, _ in items], [c for _, _, c in items]
    reliability = []
    for lo in [i / 10 for i in range(10)]:
        inside = [(p, y) for p, y in pys if lo <= p < lo + 0.1 or (lo == 0.9 and p == 1.0)]
        if inside:
            reliability.append({"bin": [lo, lo + 0.1], "mean_predicted": fmean(p for p, _ in inside),
                                "observed": fmean(y for _, y in inside), "n": len(inside)})
    return {
        "ece": cluster_mean(pys, clusters, _ece),
        "brier": cluster_mean([(p - y) ** 2 for p, y in pys], clusters),
        "mean_confidence": cluster_mean([max(p, 1 - p) for p, _ in pys], clusters),
        "reliability": reliability,
    }


def fmt(fig: dict) -> str:
    ties = f", {fig['ties']} ties" if fig.get("ties") else ""
    if fig.get("value") is None:
        return f"n/a (n=0{ties})"
    lo, hi = fig["ci95"]
    ci = f"[{lo:.2f}, {hi:.2f}]" if lo is not None else f"[no interval: {fig.get('clusters', 0)} cluster]"
    return f"{fig['value']:.2f} {ci} (n={fig['n']}{ties})"
