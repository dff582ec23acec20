"""Every job's calls go through CachedBackend, and models load lazily: a finished run, `--plan` and a
fully cached audit load no model; `cai eval` resumes after an interrupt and re-runs for free; stages
run the same in another process, and a stage step's calls can be collected before any is answered."""

from __future__ import annotations

import json
import math
import multiprocessing
import pickle

import pytest

from cai import backends
from cai.audit import run_audit
from cai.backends import CallFailed
from cai.backends.loading import spec_identity
from cai.backends.scripted import ScriptedBackend
from cai.config import load_pipeline
from cai.constitution import load_constitution
from cai.engine import Engine
from cai.eval.run import EvalConfig, run_eval
from cai.generate import generate
from cai.plan import plan
from helpers import FakeJudge, process_block, write_pipeline


def _refuse_to_load(monkeypatch):
    loads = []

    def create(name, **options):
        loads.append(name)
        raise AssertionError(f"loaded a {name} model")

    monkeypatch.setattr(backends, "create", create)
    monkeypatch.setattr("cai.backends.loading.create", create)
    return loads


@pytest.fixture
def tiny_pipeline(tmp_path, tiny_model):
    """A transformers pipeline (a model with weights, so it loads lazily) on the tiny random Llama."""
    return load_pipeline(write_pipeline(tmp_path, n_prompts=6, backend="transformers", model=tiny_model,
                                        batch_size=4))


def test_a_finished_rerun_and_plan_load_no_model(tiny_pipeline, monkeypatch):
    config = tiny_pipeline
    # The first run answers from a stand-in with the spec's identity, so its calls fill the cache.
    stand_in = ScriptedBackend("echo")
    stand_in.identity = spec_identity(config.policy)
    first = generate(config, backend=stand_in)
    assert first["counts"]["model_calls"] == 30
    loads = _refuse_to_load(monkeypatch)
    again = generate(config)
    assert again["counts"]["model_calls"] == 0 and again["counts"]["resumed"] == 6
    assert again["timings"]["load_seconds"] == 0
    assert plan(config)["model_calls"] == 0
    assert loads == []


def test_a_fully_cached_audit_loads_no_model(tiny_pipeline, tmp_path, monkeypatch):
    config = tiny_pipeline
    judge = FakeJudge(lambda a, b: (math.log(0.7), math.log(0.3)), identity=spec_identity(config.policy))
    first = run_audit(config, tmp_path / "audit", limit=3, judge_backend=judge)
    assert first["meta"]["model_calls"] > 0
    loads = _refuse_to_load(monkeypatch)
    again = run_audit(config, tmp_path / "audit", limit=3)
    assert again["meta"]["model_calls"] == 0 and again["report"] == first["report"] and loads == []


class Counting(ScriptedBackend):
    """A scripted model that counts its calls and can be told to die (KeyboardInterrupt) after `budget`."""

    made = 0
    budget = None

    def _spend(self, n):
        if Counting.budget is not None and Counting.made + n > Counting.budget:
            raise KeyboardInterrupt
        Counting.made += n

    def chat(self, conversations, sampling, progress=None):
        self._spend(len(conversations))
        return super().chat(conversations, sampling, progress)

    def choice_logprobs(self, conversations, choices, progress=None):
        self._spend(len(conversations))
        return super().choice_logprobs(conversations, choices, progress)


def test_an_interrupted_eval_resumes_with_exactly_the_remaining_calls(tmp_path, monkeypatch):
    monkeypatch.setattr("cai.backends.scripted.ScriptedBackend", Counting)
    monkeypatch.setitem(backends.REGISTRY, "scripted", ("cai.backends.scripted", "ScriptedBackend", None))
    monkeypatch.setattr("cai.eval.run.COMMIT_EVERY", 2)

    def cfg(out):
        return EvalConfig(model={"backend": "scripted", "model": "trained"},
                          baseline={"backend": "scripted", "model": "base"}, out=str(out), limit=3)

    Counting.made, Counting.budget = 0, None
    fresh = run_eval(cfg(tmp_path / "fresh"))
    total = Counting.made
    assert fresh["model_calls"] == total > 10
    Counting.made, Counting.budget = 0, 9
    with pytest.raises(KeyboardInterrupt):
        run_eval(cfg(tmp_path / "eval"))
    committed = Counting.made  # whole commits of 2 calls made before the budget ran out
    assert 0 < committed <= 9
    Counting.made, Counting.budget = 0, None
    resumed = run_eval(cfg(tmp_path / "eval"))
    assert Counting.made == resumed["model_calls"] == total - committed
    assert resumed["metrics"] == fresh["metrics"] and resumed["examples"] == fresh["examples"]
    Counting.made = 0
    again = run_eval(cfg(tmp_path / "eval"))
    assert again["model_calls"] == 0 == Counting.made
    assert again["cache_hits"] == fresh["model_calls"] + fresh["cache_hits"]
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"] == fresh["metrics"]


def test_a_block_runs_its_stages_the_same_in_another_process(tmp_path):
    config = load_pipeline(write_pipeline(tmp_path, n_prompts=5, feedback={"enabled": True, "pairs": "both"}))
    constitution = load_constitution(config.constitution)
    block = [{"id": f"b{i}", "prompt": f"How do I do thing {i}?"} for i in range(5)]
    local = Engine(config, constitution, ScriptedBackend("echo"), tmp_path / "local")
    pickle.loads(pickle.dumps(local.stages))  # stages hold no model: they travel
    here = local.process(block)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        there = pool.apply(process_block, (config, constitution, block, str(tmp_path / "remote")))
    assert there == here and all(r["feedback"]["comparisons"] for r in here)


class Collect:
    """Calls that answer nothing: they collect each step's requests (as a provider batch file would)."""

    def __init__(self):
        self.steps = []

    def chat(self, stage, conversations, ids):
        self.steps.append((stage, list(ids), conversations))
        return [CallFailed("pending: in a batch") for _ in conversations]

    def score(self, stage, conversations, ids, choices):
        return self.chat(stage, conversations, ids)


def test_a_stage_steps_calls_are_collected_as_one_batch_before_any_is_answered(tmp_path):
    config = load_pipeline(write_pipeline(tmp_path, n_prompts=4))
    engine = Engine(config, load_constitution(config.constitution), ScriptedBackend("echo"), tmp_path / "o")
    records = [{"id": f"c{i}", "prompt": f"Question {i}?", "rounds": []} for i in range(4)]
    calls = Collect()
    engine.stages[0].run(records, calls)
    # The first step hands over every example's request at once; nothing runs past an unanswered step.
    asked = [(stage, ids) for stage, ids, _ in calls.steps if ids]
    assert asked == [("respond", ["c0", "c1", "c2", "c3"])]
    assert [c[-1]["content"] for c in calls.steps[0][2]] == [r["prompt"] for r in records]
    assert all(r["failed"] == {"stage": "respond", "error": "pending: in a batch"} for r in records)


def test_an_api_answer_is_in_the_cache_as_soon_as_it_lands(tmp_path):
    """A backend that streams results (the openai one) has each committed before its batch ends:
    a kill mid-batch loses only the requests still in flight."""
    from cai.backends import Sampling
    from cai.cache import Cache, CachedBackend

    class Streaming:
        identity, supports_logprobs, streams_results = "api:s", True, True

        def chat(self, conversations, sampling, progress=None, on_result=None):
            on_result(1, "second")  # the second request answers first
            raise KeyboardInterrupt  # the process is stopped before the first one answers

    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    cached = CachedBackend(Streaming(), Cache(tmp_path / "c.sqlite"))
    with pytest.raises(KeyboardInterrupt):
        cached.chat(convs, [Sampling()] * 3)
    cached.cache.close()

    class Never(ScriptedBackend):
        def chat(self, conversations, sampling, progress=None):
            return [f"fresh {c[-1]['content']}" for c in conversations]

    again = CachedBackend(Never("x"), Cache(tmp_path / "c.sqlite"))
    again.identity = "api:s"
    assert again.chat(convs, [Sampling()] * 3) == ["fresh q0", "second", "fresh q2"]
    assert (again.hits, again.calls) == (1, 2)
