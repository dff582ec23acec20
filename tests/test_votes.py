"""Judges without log-probabilities: k sampled votes per order, the label is the vote share;
malformed replies are counted, never guessed."""

from __future__ import annotations

import json

import pytest

from cai.backends.scripted import ScriptedBackend
from cai.constitution import load_constitution
from cai.judge import VOTE_REQUEST, Comparison, vote_of
from helpers import KEY, Stub, judged, options_asked, records_by_id, write_constitution, write_pipeline


@pytest.mark.parametrize("reply, vote", [
    ('{"answer": "A"}', "A"), ('{"answer":"B"}', "B"), ("B", "B"), ("(A)", "A"), ("A.", "A"),
    ("The answer is: (B)", "B"), ("answer is A", "A"),
    ("I think A", None), ("A or B", None), ('{"answer": "C"}', None), ("", None), ("Both are fine.", None),
])
def test_a_vote_is_read_strictly(reply, vote):
    assert vote_of(reply) == vote


class Voter(ScriptedBackend):
    """Votes for the shorter option, except that a call whose seed is divisible by 4 rambles."""

    def __init__(self):
        super().__init__("voter")
        self.asked = []

    def chat(self, conversations, sampling, progress=None):
        self.asked += list(zip(conversations, sampling))
        out = []
        for conv, s in zip(conversations, sampling):
            a, b = options_asked(conv)
            out.append("Hmm, hard to say." if s.seed % 4 == 0 else '{"answer": "%s"}' % ("A" if len(a) < len(b) else "B"))
        return out


def test_votes_make_the_label_and_malformed_ones_are_counted(tmp_path):
    constitution = load_constitution(write_constitution(tmp_path / "c.yaml"))
    backend = Voter()
    items = [Comparison(id=f"c{i}", prompt=f"question {i}", a="short", b="a much longer answer here") for i in range(6)]
    verdicts = judged(backend, constitution, items, principles=2, votes=5)
    # What was asked: every conversation ends with the vote request, sampled, each vote its own seed.
    assert len(backend.asked) == 6 * 2 * 2 * 5
    assert all(c[-1]["content"].endswith(VOTE_REQUEST) for c, _ in backend.asked)
    assert {(s.temperature, s.schema) for _, s in backend.asked} == {(1.0, "choice")}
    assert len({s.seed for _, s in backend.asked}) == len(backend.asked)
    for v, item in zip(verdicts, items):
        # The shorter answer (a) won every valid vote in both orders; rambling replies are counted.
        rambled = sum(s.seed % 4 == 0 for c, s in backend.asked
                      if options_asked(c) in (("short", item.b), (item.b, "short")) and f"question {item.id[1:]}" in c[-1]["content"])
        assert v.malformed == rambled
        assert v.p_first == 1.0 and v.p_second == 1.0 and v.p_a == 1.0
        assert v.option_mass == pytest.approx(1 - rambled / 20)


def test_a_judge_that_never_votes_gives_no_label_not_a_tie(tmp_path):
    constitution = load_constitution(write_constitution(tmp_path / "c.yaml"))

    class Rambler(ScriptedBackend):
        def chat(self, conversations, sampling, progress=None):
            return ["Both have merits." for _ in conversations]

    (v,) = judged(Rambler("r"), constitution, [Comparison(id="x", prompt="q", a="a", b="b")], principles=1, votes=3)
    assert v.p_a is None and v.malformed == 6


def test_an_api_judge_without_logprobs_votes_with_structured_output(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)

    def reply(body):
        if VOTE_REQUEST in body["messages"][-1]["content"]:
            return '{"answer": "%s"}' % ("A" if body["seed"] % 3 else "B")
        return "echo: " + body["messages"][-1]["content"][-40:]

    stub = Stub(reply=reply, logprobs=False)
    pipeline = write_pipeline(tmp_path, n_prompts=3, backend="openai", model="stub-model", base_url=stub.url,
                              logprobs=False, rounds=1, feedback={"enabled": True, "principles": 1, "votes": 4})
    from cai.config import load_pipeline
    from cai.generate import generate

    summary = generate(load_pipeline(pipeline))
    assert summary["judge"]["method"] == "votes" and summary["judge"]["votes"] == 4
    votes = [b for b in map(json.loads, stub.bodies) if VOTE_REQUEST in b["messages"][-1]["content"]]
    assert len(votes) == 3 * 2 * 4 == summary["counts"]["judge_calls"]
    assert all("logprobs" not in b and b["response_format"]["json_schema"]["name"] == "choice"
               and b["temperature"] == 1.0 for b in votes)
    for rec in (r[0] for r in records_by_id(tmp_path / "out").values()):
        (comp,) = rec["feedback"]["comparisons"]
        # Each order's label is a share of 4 votes.
        assert comp["p_first"] * 4 == round(comp["p_first"] * 4) and comp["malformed"] == 0
