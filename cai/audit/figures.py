"""Bias figures from judge verdicts, each raw (one order, one principle) and mitigated.

`raw` reads what a plain judge gives: the first principle drawn, the pair in
the order shown. `mitigated` reads our label: both orders averaged over the
principle ensemble. A Target pairs a verdict with whether its `a` answer is
the one the figure asks about (the better, longer, padded, list-formatted...).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean

from cai.judge import Comparison, Verdict
from cai.stats import mean_figure, proportion


@dataclass
class Target:
    verdict: Verdict
    a_is_target: bool
    item: Comparison | None = None

    def p(self, mode: str) -> float | None:
        """P(the target answer is judged better)."""
        v = self.verdict
        if mode == "raw":
            first = v.per_principle[0] if v.per_principle else {}
            p_a = first.get("p_first")
        else:
            p_a = v.p_a
        if p_a is None:
            return None
        return p_a if self.a_is_target else 1 - p_a


MODES = ("raw", "mitigated")


def prefers(targets: list[Target], mode: str) -> dict:
    """Share of comparisons where the judge prefers the target answer (0.5 = indifferent)."""
    ps = [p for p in (t.p(mode) for t in targets) if p is not None]
    return proportion(sum(p > 0.5 for p in ps), len(ps))


def both_modes(fn, *args) -> dict:
    return {mode: fn(*args, mode) for mode in MODES}


def position(verdicts: list[Verdict]) -> dict:
    """Per (comparison, principle) measurement: do the two orders agree, and how often is the first shown picked?"""
    agree = flips = measured = firsts = singles = 0
    for v in verdicts:
        for m in v.per_principle:
            pf, ps = m.get("p_first"), m.get("p_second")
            for p, a_shown_first in ((pf, True), (ps, False)):
                if p is not None and p != 0.5:
                    singles += 1
                    firsts += (p > 0.5) == a_shown_first
            if pf is None or ps is None:
                continue
            measured += 1
            same = (pf - 0.5) * (ps - 0.5) > 0
            agree += same
            flips += not same and pf != 0.5 and ps != 0.5
    ensembled = [v for v in verdicts if v.p_first is not None and v.p_second is not None]
    return {
        "raw": {"consistency": proportion(agree, measured), "primacy_share": proportion(firsts, singles),
                "flip_rate": proportion(flips, measured)},
        # After the principle ensemble, per order; averaging the two orders then makes the label
        # order-invariant by construction, which is the point of swap-and-average.
        "mitigated": {"consistency": proportion(sum(v.position_consistent for v in ensembled), len(ensembled)),
                      "swap_averaged_order_invariant": True},
    }


def shift(pairs: list[tuple[Target, Target]], mode: str) -> dict:
    """Mean change in P(target better) from the first comparison to the second (bootstrap CI)."""
    deltas = [b.p(mode) - a.p(mode) for a, b in pairs if a.p(mode) is not None and b.p(mode) is not None]
    return mean_figure(deltas)


def agreement(pairs: list[tuple[Target, Target]], mode: str) -> dict:
    """Share of pairs whose two comparisons pick the same winner."""
    same = [(a.p(mode) > 0.5) == (b.p(mode) > 0.5) for a, b in pairs
            if a.p(mode) is not None and b.p(mode) is not None]
    return proportion(sum(same), len(same))


def _ece(items: list[tuple[float, bool]]) -> float:
    bins: dict[int, list[tuple[float, bool]]] = {}
    for p, y in items:
        conf = max(p, 1 - p)
        bins.setdefault(min(int((conf - 0.5) * 20), 9), []).append((conf, (p > 0.5) == y))
    return sum(len(b) / len(items) * abs(fmean(c for c, _ in b) - fmean(ok for _, ok in b)) for b in bins.values())


def calibration(targets: list[Target], mode: str) -> dict:
    """Targets are the known better answers: accuracy, ECE over 10 confidence bins, Brier, reliability bins."""
    # Stated as P(a better) against whether a is better, so the known orientation is not a given.
    items = [(t.p(mode) if t.a_is_target else 1 - t.p(mode), t.a_is_target) for t in targets
             if t.p(mode) is not None]
    reliability = []
    for lo in [i / 10 for i in range(10)]:
        inside = [(p, y) for p, y in items if lo <= p < lo + 0.1 or (lo == 0.9 and p == 1.0)]
        if inside:
            reliability.append({"bin": [lo, lo + 0.1], "mean_predicted": fmean(p for p, _ in inside),
                                "observed": fmean(y for _, y in inside), "n": len(inside)})
    return {
        "accuracy": proportion(sum((p > 0.5) == y for p, y in items), len(items)),
        "ece": mean_figure(items, _ece),
        "brier": mean_figure([(p - y) ** 2 for p, y in items]),
        "mean_confidence": mean_figure([max(p, 1 - p) for p, _ in items]),
        "reliability": reliability,
    }


def fmt(fig: dict) -> str:
    if fig.get("value") is None:
        return "n/a (n=0)"
    lo, hi = fig["ci95"]
    return f"{fig['value']:.2f} [{lo:.2f}, {hi:.2f}] (n={fig['n']})"
