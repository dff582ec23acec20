"""Which answer a judged pair chooses, and what its per-order probabilities mean."""

from __future__ import annotations

import pytest

from cai.config import FeedbackConfig
from cai.labels import label


def _comparison(p_first, p_second, a="the revision", b="the initial answer"):
    return {"p_a": (p_first + p_second) / 2, "p_first": p_first, "p_second": p_second, "a": a, "b": b}


def test_p_first_is_the_chosen_answer_shown_first_whichever_answer_wins():
    config = FeedbackConfig(enabled=True)
    # a shown first: P(a) = 0.7; a shown second: P(a) = 0.1. So b wins (mean 0.4); b was shown first
    # in the second order, where it got 1 - 0.1 = 0.9, and second in the first order: 0.3.
    lab = label(_comparison(0.7, 0.1), config)
    assert lab["chosen"] == "the initial answer" and lab["chosen_prob"] == pytest.approx(0.6)
    assert lab["p_first"] == pytest.approx(0.9) and lab["p_second"] == pytest.approx(0.3)
    # When a wins they are a's own.
    lab = label(_comparison(0.9, 0.3), config)
    assert lab["chosen"] == "the revision" and (lab["p_first"], lab["p_second"]) == (0.9, 0.3)
    # Either way the chosen answer's mean over the two orders is chosen_prob.
    for c in (_comparison(0.7, 0.1), _comparison(0.9, 0.3)):
        lab = label(c, config)
        assert (lab["p_first"] + lab["p_second"]) / 2 == pytest.approx(lab["chosen_prob"])


def test_an_exact_tie_kept_as_a_pair_is_not_always_given_to_the_revision():
    config = FeedbackConfig(enabled=True, include_ties=True)
    winners = [label(_comparison(0.5, 0.5, a=f"revision {i}", b=f"initial {i}"), config)["chosen"]
               for i in range(40)]
    revised = sum(w.startswith("revision") for w in winners)
    assert 10 < revised < 30  # a coin, not always a
    # The coin is about the pair, not the order: swapping a and b picks the same text.
    for i in range(10):
        one = label(_comparison(0.5, 0.5, a=f"revision {i}", b=f"initial {i}"), config)["chosen"]
        two = label(_comparison(0.5, 0.5, a=f"initial {i}", b=f"revision {i}"), config)["chosen"]
        assert one == two
