"""Principle sampling: weighted, deterministic, and stable when other principles are edited."""

from collections import Counter

from cai.constitution import Principle
from cai.critique import sample_principle


def _principles(weights):
    return [Principle(id=f"p{i}", critique="c", revision="r", weight=w) for i, w in enumerate(weights)]


IDS = [f"ex-{i}" for i in range(4000)]


def _draws(principles, round_no=1, seed=0):
    return {i: sample_principle(principles, i, round_no, seed).id for i in IDS}


def test_deterministic_and_depends_on_round_and_seed():
    ps = _principles([1, 1, 1, 1])
    assert _draws(ps) == _draws(ps)
    assert _draws(ps, round_no=2) != _draws(ps)
    assert _draws(ps, seed=1) != _draws(ps)


def test_frequencies_follow_weights():
    ps = _principles([1, 2, 1, 4])
    counts = Counter(_draws(ps).values())
    total = sum(p.weight for p in ps)
    for p in ps:
        expected = len(IDS) * p.weight / total
        assert abs(counts[p.id] - expected) < 4 * expected ** 0.5, (p.id, counts[p.id], expected)


def test_adding_a_principle_only_moves_draws_to_it():
    ps = _principles([1, 1, 1, 1])
    before = _draws(ps)
    after = _draws(ps + [Principle(id="new", critique="c", revision="r")])
    moved = {i for i in IDS if before[i] != after[i]}
    assert moved and all(after[i] == "new" for i in moved)
    assert 0.1 < len(moved) / len(IDS) < 0.3  # about 1/5


def test_removing_a_principle_only_moves_its_draws():
    ps = _principles([1, 1, 1, 1])
    before = _draws(ps)
    after = _draws(ps[:2] + ps[3:])
    moved = {i for i in IDS if before[i] != after[i]}
    assert moved == {i for i in IDS if before[i] == "p2"}


def test_reweighting_moves_draws_only_to_or_from_that_principle():
    ps = _principles([1, 1, 1, 1])
    before = _draws(ps)
    heavier = _principles([1, 1, 3, 1])
    after = _draws(heavier)
    moved = {i for i in IDS if before[i] != after[i]}
    assert moved and all(after[i] == "p2" for i in moved)
    lighter = _draws(_principles([1, 1, 0.2, 1]))
    moved = {i for i in IDS if before[i] != lighter[i]}
    assert moved and all(before[i] == "p2" for i in moved)


def test_editing_text_changes_no_draw():
    ps = _principles([1, 1, 1, 1])
    edited = [p.model_copy(update={"critique": "new text"}) if p.id == "p1" else p for p in ps]
    assert _draws(ps) == _draws(edited)
