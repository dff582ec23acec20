"""The preference a judged pair gives: which answer is chosen, with what confidence.

Pure (no judge, no model): the dataset builder orients rows with it without
importing the judge.
"""

from __future__ import annotations

import hashlib
import math

REVISION_PAIR = "revision_vs_initial"


def label(comparison: dict, config) -> dict:
    """The preference a judged pair gives: {status, chosen, rejected, chosen_prob, margin, ...}.

    `config` is the run's FeedbackConfig (tie_threshold, include_ties, min_confidence).
    status is `pair` (becomes a row), `tie`, `low_confidence` or `malformed`.
    margin is the log-odds of chosen_prob: the Bradley-Terry reward gap the
    judge implies, which TRL's RewardTrainer takes as its `margin` column.
    """
    p = comparison["p_a"]
    if p is None:
        return {"status": "malformed"}
    # An exact 0.5 (e.g. an included tie) is decided by a coin on the texts, not always for a (the revision).
    a_wins = p > 0.5 or (p == 0.5 and _coin(comparison["a"], comparison["b"]))
    chosen_prob = p if a_wins else 1 - p
    bounded = min(chosen_prob, 1 - 1e-6)
    out = {
        "chosen": comparison["a"] if a_wins else comparison["b"],
        "rejected": comparison["b"] if a_wins else comparison["a"],
        "chosen_prob": chosen_prob, "margin": math.log(bounded / (1 - bounded)),
        # P(chosen better) with the chosen answer shown first, and shown second, so a reader sees how
        # each order voted. The comparison's p_first is a's shown first: when b is chosen, b was shown
        # first in the other order.
        "p_first": comparison["p_first"] if a_wins else 1 - comparison["p_second"],
        "p_second": comparison["p_second"] if a_wins else 1 - comparison["p_first"],
    }
    out["tie"] = abs(p - 0.5) < config.tie_threshold
    if out["tie"] and not config.include_ties:
        out["status"] = "tie"
    elif chosen_prob < config.min_confidence:
        out["status"] = "low_confidence"
    else:
        out["status"] = "pair"
    return out


def _coin(a: str, b: str) -> bool:
    """A fair, reproducible coin that does not depend on which answer is a."""
    first, second = sorted((a, b))
    return (hashlib.sha256(f"{first}\x1f{second}".encode()).digest()[0] % 2 == 0) == (a == first)
