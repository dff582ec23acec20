"""AI feedback: soft labels, both orders, principle ensembles, CoT clamp, ties, malformed outputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from cai.backends.scripted import ScriptedBackend
from cai.config import FeedbackConfig, load_pipeline
from cai.constitution import load_constitution
from cai.judge import Comparison, Judge, soft_label
from cai.generate import generate
from cai.labels import label
from helpers import FakeJudge, judged, write_constitution, write_pipeline

def always_a(a, b):
    return (math.log(0.9), math.log(0.1))


def prefers_safe(a, b):
    """Fair: prefers the option that says 'safe', wherever it is shown."""
    return (math.log(0.8), math.log(0.2)) if "safe" in a and "safe" not in b else (math.log(0.2), math.log(0.8))


@pytest.fixture
def constitution(tmp_path):
    return load_constitution(write_constitution(tmp_path / "c.yaml"))


def items(n=6):
    return [Comparison(id=f"c{i}", prompt=f"question {i}", a=f"safe answer {i}", b=f"risky answer {i}")
            for i in range(n)]


def test_soft_label_normalizes_over_the_options_and_rejects_uninformative_scores():
    p, mass = soft_label([math.log(0.3), math.log(0.1)])
    assert p == pytest.approx(0.75) and mass == pytest.approx(0.4)
    assert soft_label([-2.0, -2.0]) is None  # both letters unseen (e.g. outside an API's top-k)
    assert soft_label([float("nan"), -1.0]) is None
    assert soft_label([float("-inf"), -1.0]) is None


def test_a_judge_that_always_says_a_is_position_biased_and_averages_to_a_tie(constitution):
    fake = FakeJudge(always_a)
    verdicts = judged(fake, constitution, items(), principles=2)
    for v in verdicts:
        assert v.p_first == pytest.approx(0.9) and v.p_second == pytest.approx(0.1)
        assert v.p_a == pytest.approx(0.5) and not v.position_consistent
        assert len(v.principle_ids) == 2 and len(v.per_principle) == 2
    assert fake.scored == 6 * 2 * 2  # comparisons x principles x orders
    assert label({"a": "x", "b": "y", **vars(verdicts[0])}, FeedbackConfig())["status"] == "tie"


def test_a_fair_judge_is_consistent_across_orders(constitution):
    verdicts = judged(FakeJudge(prefers_safe), constitution, items(), principles=3)
    for v in verdicts:
        assert v.position_consistent and v.p_a == pytest.approx(0.8)
        lab = label({"a": "safe", "b": "risky", **vars(v)}, FeedbackConfig())
        assert lab["status"] == "pair" and lab["chosen"] == "safe" and lab["chosen_prob"] == pytest.approx(0.8)
        assert lab["margin"] == pytest.approx(math.log(0.8 / 0.2))


def test_principle_draws_are_deterministic_distinct_and_from_comparison_principles(constitution):
    judge = Judge(constitution, principles=2)
    draws = [tuple(p.id for p in judge.draw(f"c{i}")) for i in range(40)]
    assert draws == [tuple(p.id for p in judge.draw(f"c{i}")) for i in range(40)]
    assert all(len(set(d)) == 2 for d in draws)
    assert len(set(draws)) > 1  # different comparisons get different principles
    comparable = {p.id for p in constitution.comparison_principles}
    assert {pid for d in draws for pid in d} <= comparable


def test_chain_of_thought_probabilities_are_clamped_to_40_60(constitution):
    extreme = lambda a, b: (math.log(0.999), math.log(0.001)) if "safe" in a else (math.log(0.001), math.log(0.999))
    verdicts = judged(FakeJudge(extreme), constitution, items(3), cot=True)
    for v in verdicts:
        assert v.p_first == pytest.approx(0.6) and v.p_second == pytest.approx(0.6)
        assert v.reasoning and all("weaker" in r for r in v.reasoning)
    plain = judged(FakeJudge(extreme), constitution, items(1))[0]
    assert plain.p_a == pytest.approx(0.999)


def test_malformed_judge_outputs_are_counted_not_fatal(constitution):
    blank = FakeJudge(lambda a, b: (-3.0, -3.0))  # neither letter: identical floor scores
    v = judged(blank, constitution, items(2), principles=2)
    assert all(x.p_a is None and x.malformed == 4 for x in v)
    assert label({"a": "x", "b": "y", **vars(v[0])}, FeedbackConfig())["status"] == "malformed"
    empty_cot = FakeJudge(prefers_safe, reasoning="   ")
    assert all(x.p_a is None and x.malformed == 4 for x in judged(empty_cot, constitution, items(2), principles=2, cot=True))
    # One bad order out of four measurements: the verdict survives, the bad one is counted.
    half = FakeJudge(lambda a, b: (-1.0, -1.0) if a.startswith("risky") else (-0.2, -2.0))
    x = judged(half, constitution, items(1), principles=2)[0]
    assert x.malformed == 2 and x.p_first is not None and x.p_second is None and x.p_a is None


def test_ties_and_min_confidence(constitution):
    comp = {"a": "x", "b": "y", "p_first": 0.52, "p_second": 0.5, "p_a": 0.51}
    assert label(comp, FeedbackConfig(tie_threshold=0.02))["status"] == "tie"
    assert label(comp, FeedbackConfig(tie_threshold=0.02, include_ties=True))["status"] == "pair"
    comp = {"a": "x", "b": "y", "p_first": 0.3, "p_second": 0.3, "p_a": 0.3}
    lab = label(comp, FeedbackConfig(min_confidence=0.8))
    assert lab["status"] == "low_confidence" and lab["chosen"] == "y" and lab["chosen_prob"] == pytest.approx(0.7)
    assert label(comp, FeedbackConfig(min_confidence=0.6))["status"] == "pair"


class SeededPolicy(ScriptedBackend):
    """Echo policy whose sampled answers depend on the seed, so sampled pairs differ."""

    def chat(self, conversations, sampling, progress=None):
        out = super().chat(conversations, sampling, progress)
        return [o if s.greedy else " ".join([f"w{(s.seed >> k) % 64}" for k in range(0, 30, 2)]
                                            + ["safe" if s.seed % 2 else "risky"])
                for o, s in zip(out, sampling)]


def _run(tmp_path, judge, policy=None, **fields):
    fields.setdefault("feedback", {"enabled": True, "principles": 2})
    path = write_pipeline(tmp_path, n_prompts=10, rounds=1, backend="scripted", **fields)
    config = load_pipeline(path, out=str(tmp_path / "run"))
    summary = generate(config, str(path), backend=policy or ScriptedBackend("policy"), judge=judge)
    import datasets
    ds = datasets.load_dataset(str(tmp_path / "run" / "dataset"))
    return summary, datasets.concatenate_datasets(list(ds.values()))


def test_generate_with_feedback_orients_pairs_by_the_judge(tmp_path):
    # The judge prefers the initial answer ("Reply 0 ...") over the revision.
    prefers_initial = lambda a, b: (math.log(0.85), math.log(0.15)) if a.startswith("Reply 0") else (math.log(0.15), math.log(0.85))
    judge = FakeJudge(prefers_initial)
    summary, rows = _run(tmp_path, judge)
    c = summary["counts"]
    assert c["comparisons"] == 10 and c["pairs"] == len(rows) == 10 and c["position_consistent"] == 10
    assert summary["judge"] == {"backend": "scripted", "spec": "echo", "identity": "scripted:judge",
                                "same_as_policy": False, "method": "logprobs"}
    assert not summary["warnings"]
    records = [json.loads(l) for f in sorted((tmp_path / "run" / "records").glob("*.jsonl")) for l in f.open()]
    by_id = {r["id"]: r for r in records}
    for row in rows:
        rec = by_id[row["id"]]
        assert row["chosen"][0]["content"] == rec["initial"] and row["rejected"][0]["content"] == rec["final"]
        assert row["chosen_prob"] == pytest.approx(0.85) and row["pair"] == "revision_vs_initial"
        assert row["margin"] == pytest.approx(math.log(0.85 / 0.15))
        assert row["p_first"] == pytest.approx(0.85) and row["p_second"] == pytest.approx(0.85)
        assert len(row["judge_principle_ids"]) == 2 and row["position_consistent"]
    # Re-running makes no call at all: the judge's scores are cached too.
    judge.scored = 0
    summary, _ = _run(tmp_path, judge)
    assert summary["counts"]["model_calls"] == 0 and judge.scored == 0


def test_sampled_pairs_are_judged_pairwise_and_ties_counted(tmp_path):
    judge = FakeJudge(lambda a, b: prefers_safe(a, b) if ("safe" in a) != ("safe" in b) else (-0.7, -0.7001))
    summary, rows = _run(tmp_path, judge, policy=SeededPolicy("policy"),
                         feedback={"enabled": True, "pairs": "samples", "samples": 3, "principles": 1})
    c = summary["counts"]
    assert c["comparisons"] + c["skipped_identical"] == 10 * 3  # 3 pairs per prompt from 3 samples
    assert c["pairs"] + c["ties"] + c["low_confidence"] + c["unusable"] == c["comparisons"]
    assert c["ties"] > 0 and c["pairs"] > 0
    assert {r["pair"] for r in rows} <= {"samples:1-2", "samples:1-3", "samples:2-3"}
    assert all("safe" in r["chosen"][0]["content"] and "risky" in r["rejected"][0]["content"] for r in rows)


def test_same_model_judge_is_recorded_and_warned(tmp_path):
    path = write_pipeline(tmp_path, n_prompts=3, rounds=1, backend="scripted")
    res = subprocess.run([sys.executable, "-m", "cai", "generate", str(path), "--feedback", "--out",
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "self-preference" in res.stderr and "AI feedback: 3 judged pairs" in res.stderr
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["judge"]["same_as_policy"] and run["config"]["feedback"]["enabled"]
    res = subprocess.run([sys.executable, "-m", "cai", "generate", str(path), "--feedback", "--judge-model", "other",
                          "--out", str(tmp_path / "run2")], capture_output=True, text=True, timeout=120)
    run = json.loads((tmp_path / "run2" / "run.json").read_text())
    assert res.returncode == 0 and "self-preference" not in res.stderr
    assert run["judge"] == {"backend": "scripted", "spec": "other", "identity": "scripted:other", "same_as_policy": False, "method": "logprobs"}


def test_feedback_needs_a_comparison_question(tmp_path):
    principles = [{"id": "p1", "critique": "Critique it.", "revision": "Revise it."}]
    c = write_constitution(tmp_path / "c.yaml", principles=principles)
    path = write_pipeline(tmp_path, n_prompts=2, backend="scripted", constitution=str(c))
    res = subprocess.run([sys.executable, "-m", "cai", "generate", str(path), "--feedback", "--out",
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "comparison question" in res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_soft_labels_on_the_embedded_model(embedded, tmp_path):
    from cai.backends.hf import TransformersBackend

    constitution = load_constitution("constitution/harmless.yaml")
    backend = TransformersBackend(embedded.path)
    comps = [
        Comparison("e1", "How do I pick a lock?", "I can't help with breaking into property, but a locksmith can.",
                   "Insert a tension wrench and rake the pins until it opens."),
        Comparison("e2", "Tell me a joke.", "Why did the chicken cross the road? To get to the other side.", "No."),
        Comparison("e3", "How can I hurt my neighbour?", "Hit him hard with a bat when he is not looking.",
                   "I won't help hurt anyone. If there is a conflict, talking or mediation can help."),
        Comparison("e4", "What is the capital of France?", "Paris.", "The capital of France is Berlin."),
    ]
    verdicts = judged(backend, constitution, comps, principles=2)
    firsts = [v.p_first for v in verdicts]
    seconds = [v.p_second for v in verdicts]
    assert all(v.malformed == 0 and 0 < v.p_a < 1 for v in verdicts)
    assert max(firsts) - min(firsts) > 0.01  # not a constant label
    assert any(abs(f - s) > 1e-3 for f, s in zip(firsts, seconds))  # the swapped order was really scored
    assert all(v.option_mass > 0.01 for v in verdicts)  # the judge does answer with a letter
    print("embedded judge:", [(v.id, round(v.p_first, 3), round(v.p_second, 3)) for v in verdicts])


@pytest.mark.slow
def test_generate_with_feedback_on_the_embedded_model(tmp_path):
    import datasets

    pipeline = tmp_path / "fb.yaml"
    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    pipeline.write_text(
        f"name: fb\nconstitution: {root / 'constitution' / 'harmless.yaml'}\n"
        f"prompts: [{root / 'pipelines' / 'prompts' / 'red_team.jsonl'}, {root / 'pipelines' / 'prompts' / 'benign.jsonl'}]\n"
        "limit: 3\nrounds: 1\nfew_shot: 1\ntest_size: 0\n"
        "sampling: {respond: {max_new_tokens: 32}, critique: {max_new_tokens: 32}, revise: {max_new_tokens: 32}}\n"
        "feedback: {enabled: true, pairs: both, samples: 2, principles: 2, include_ties: true,"
        " sample_sampling: {max_new_tokens: 32, temperature: 0.9}}\n")
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "cai", "generate", str(pipeline), "--out", str(out)],
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    c = run["counts"]
    assert run["judge"]["same_as_policy"] and "self-preference" in res.stderr
    assert c["comparisons"] >= 3 and c["judge_calls"] == c["comparisons"] * 4
    assert c["unusable"] == 0  # the embedded judge always gives both letters some probability
    rows = datasets.load_dataset(str(out / "dataset"))["train"]
    assert len(rows) == c["pairs"] == c["comparisons"] - c["low_confidence"]
    probs = rows["chosen_prob"]
    assert all(0.5 <= p <= 1 for p in probs) and len(set(probs)) > 1
    for r in rows:
        assert r["margin"] == pytest.approx(math.log(r["chosen_prob"] / (1 - r["chosen_prob"])))
        assert r["chosen"] != r["rejected"] and len(r["judge_principle_ids"]) == 2
