"""The preference a judged pair gives: which answer is chosen, with what confidence.

Pure (no judge, no model): the dataset builder orients rows with it without
importing the judge.
"""

from __future__ import annotations

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
    a_wins = p >= 0.5
    chosen_prob = p if a_wins else 1 - p
    bounded = min(chosen_prob, 1 - 1e-6)
    out = {
        "chosen": comparison["a"] if a_wins else comparison["b"],
        "rejected": comparison["b"] if a_wins else comparison["a"],
        "chosen_prob": chosen_prob, "margin": math.log(bounded / (1 - bounded)),
        # Per-order probabilities of the chosen answer, so a reader sees how each order voted.
        "p_first": comparison["p_first"] if a_wins else 1 - comparison["p_first"],
        "p_second": comparison["p_second"] if a_wins else 1 - comparison["p_second"],
    }
    out["tie"] = abs(p - 0.5) < config.tie_threshold
    if out["tie"] and not config.include_ties:
        out["status"] = "tie"
    elif chosen_prob < config.min_confidence:
        out["status"] = "low_confidence"
    else:
        out["status"] = "pair"
    return out
