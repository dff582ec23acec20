"""The openai backend against a loopback OpenAI-compatible stub: concurrency, retries,
failures that leave examples pending, preflight errors, and the API key kept secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cai.backends import CallFailed, Sampling, create
from helpers import KEY, Stub, write_pipeline


@pytest.fixture
def stub(request, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    s = Stub(getattr(request, "param", None))
    yield s
    s.close()


def convs(n):
    return [[{"role": "user", "content": f"question {i}"}] for i in range(n)]


def test_batch_runs_concurrently_in_order(stub):
    backend = create("openai", model="stub-model", base_url=stub.url, concurrency=4)
    done = []
    out = backend.chat(convs(20), [Sampling(max_new_tokens=8)] * 20, progress=done.append)
    assert out == [f"echo: question {i}" for i in range(20)]
    assert 1 < stub.max_in_flight <= 4 and sum(done) == 20
    assert stub.bad_auth == 0


@pytest.mark.parametrize("stub", [lambda body, attempt: (429, [("Retry-After", "1")]) if attempt == 1 else None],
                         indirect=True)
def test_429_with_retry_after_is_retried_by_the_client(stub):
    backend = create("openai", model="stub-model", base_url=stub.url, concurrency=8)
    out = backend.chat(convs(6), [Sampling()] * 6)
    assert out == [f"echo: question {i}" for i in range(6)]
    assert stub.requests == 12  # each refused once, then served
    assert backend.stats["requests"] == 6 and backend.stats["retries"] == 6


@pytest.mark.parametrize("stub", [lambda body, attempt: (500, []) if "question 2" in str(body["messages"]) else None],
                         indirect=True)
def test_a_request_that_keeps_failing_comes_back_as_call_failed(stub):
    backend = create("openai", model="stub-model", base_url=stub.url, max_retries=1)
    out = backend.chat(convs(4), [Sampling()] * 4)
    assert isinstance(out[2], CallFailed) and "500" in str(out[2])
    assert out[:2] + out[3:] == ["echo: question 0", "echo: question 1", "echo: question 3"]
    assert stub.attempts["question 2"] == 2  # first try + one retry
    assert backend.stats == {"requests": 4, "attempts": 5, "retries": 1, "failed": 1, "rate_limited": 0}


def test_choice_logprobs_from_top_logprobs(stub):
    backend = create("openai", model="stub-model", base_url=stub.url)
    (scores,) = backend.choice_logprobs(convs(1), [" A", " B", " C"])
    assert scores[0] == pytest.approx(-0.2) and scores[1] == pytest.approx(-1.8)
    assert scores[2] < scores[1]  # absent from the top list: below every listed token


def test_a_server_without_logprobs_is_named_as_such(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server = Stub(logprobs=False)
    try:
        backend = create("openai", model="stub-model", base_url=server.url)
        (result,) = backend.choice_logprobs(convs(1), [" A", " B"])
    finally:
        server.close()
    assert isinstance(result, CallFailed)
    assert "no logprobs" in str(result) and "soft labels" in str(result)


def _cli(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "cai", "generate", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


def test_generate_over_the_api_and_the_key_is_written_nowhere(stub, tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=6, backend="openai", model="stub-model")
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    res = _cli([str(pipeline), "--base-url", stub.url, "--out", str(tmp_path / "run")], env, tmp_path)
    assert res.returncode == 0, res.stderr
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["counts"]["records"] == 6 and run["model"]["identity"] == "api:stub-model"
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in res.stdout + res.stderr


def test_bad_api_setups_fail_fast_with_one_line(stub, tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=2, backend="openai", model="stub-model")
    out = ["--out", str(tmp_path / "run")]
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    no_key = _cli([str(pipeline), "--base-url", stub.url, *out], env, tmp_path)
    assert no_key.returncode == 2 and "OPENAI_API_KEY is not set" in no_key.stderr
    env["OPENAI_API_KEY"] = KEY
    unserved = _cli([str(pipeline), "--base-url", stub.url, "--model", "other", *out], env, tmp_path)
    assert unserved.returncode == 2 and "does not serve 'other'" in unserved.stderr
    unreachable = _cli([str(pipeline), "--base-url", "http://127.0.0.1:9/v1", *out], env, tmp_path)
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
    for res in (no_key, unserved, unreachable):
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


def test_the_stage_repetition_penalty_goes_in_the_field_the_server_names(monkeypatch):
    """The OpenAI API has no repetition penalty; servers that have one are sent the stage's value in
    the field `repetition_penalty_field` names, and that choice is part of the identity."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    bodies = []
    stub = Stub(lambda body, attempt: bodies.append(body))
    try:
        plain = create("openai", model="stub-model", base_url=stub.url, extra_body={"top_k": 5})
        plain.chat(convs(1), [Sampling(repetition_penalty=1.1)])
        assert "repetition_penalty" not in bodies[-1] and bodies[-1]["top_k"] == 5
        named = create("openai", model="stub-model", base_url=stub.url, extra_body={"top_k": 5},
                       repetition_penalty_field="repetition_penalty")
        named.chat(convs(2), [Sampling(repetition_penalty=1.1), Sampling()])
        sent = sorted(bodies[-2:], key=lambda b: b["messages"][-1]["content"])
        assert sent[0]["repetition_penalty"] == 1.1 and sent[0]["top_k"] == 5
        assert "repetition_penalty" not in sent[1]  # 1.0: nothing to send
    finally:
        stub.close()
    assert plain.identity == 'api:stub-model|{"top_k": 5}'  # unchanged: existing caches stay valid
    assert named.identity == 'api:stub-model|{"top_k": 5}|penalty:repetition_penalty'


def test_a_run_warns_when_the_penalty_cannot_reach_the_server(stub, tmp_path):
    pipeline = write_pipeline(tmp_path, 2, backend="openai", model="stub-model", base_url=stub.url,
                              sampling={"respond": {"repetition_penalty": 1.1}})
    done = subprocess.run([sys.executable, "-m", "cai", "generate", str(pipeline), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": KEY}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (warning,) = [w for w in json.loads((tmp_path / "run" / "run.json").read_text())["warnings"] if "not sent" in w]
    assert "repetition_penalty (1.1)" in warning and "policy.options.repetition_penalty_field" in warning
    assert "not sent to the openai backend" in done.stderr


def test_spellings_of_one_choice_add_up_instead_of_overwriting(monkeypatch):
    # A server lists " A" and "A" apart; before, the later one replaced the earlier in the map.
    import math

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server = Stub(logprobs=[(" A", math.log(0.3)), ("B", math.log(0.25)), ("A", math.log(0.2)), (" B", math.log(0.05))])
    try:
        (scores,) = create("openai", model="stub-model", base_url=server.url).choice_logprobs(convs(1), [" A", " B"])
    finally:
        server.close()
    assert math.exp(scores[0]) == pytest.approx(0.5) and math.exp(scores[1]) == pytest.approx(0.3)


def test_rpm_and_tpm_pace_requests_however_many_are_in_flight(stub):
    backend = create("openai", model="stub-model", base_url=stub.url, concurrency=8, rpm=600)
    backend.chat(convs(8), [Sampling(max_new_tokens=8)] * 8)
    gaps = [b - a for a, b in zip(stub.arrivals, stub.arrivals[1:])]
    assert min(gaps) > 0.08  # 600 a minute: one every 0.1 s, though 8 could be in flight
    # tpm: each request is estimated at 2 (text) + 4 (markers) + 34 (reply) = 40 tokens; 2400 a minute: one a second.
    # All three take their slots before any answer's usage could correct the estimate.
    start = len(stub.arrivals)
    backend = create("openai", model="stub-model", base_url=stub.url, concurrency=8, tpm=2400)
    backend.chat([[{"role": "user", "content": "hi there"}]] * 3, [Sampling(max_new_tokens=34)] * 3)
    gaps = [b - a for a, b in zip(stub.arrivals[start:], stub.arrivals[start + 1:])]
    assert len(gaps) == 2 and min(gaps) > 0.9


@pytest.mark.parametrize("stub", [lambda body, attempt: (429, [("Retry-After", "0.2")]) if attempt <= 3 else None],
                         indirect=True)
def test_429s_beyond_the_clients_retries_are_waited_out_not_failed(stub):
    backend = create("openai", model="stub-model", base_url=stub.url, concurrency=4, max_retries=0)
    out = backend.chat(convs(4), [Sampling()] * 4)
    assert out == [f"echo: question {i}" for i in range(4)]
    assert backend.stats["rate_limited"] >= 4 and backend.stats["failed"] == 0
    backend = create("openai", model="stub-model", base_url=stub.url, max_retries=0, rate_limit_wait=0)
    (failed,) = backend.chat([[{"role": "user", "content": "another"}]], [Sampling()])
    assert isinstance(failed, CallFailed) and "429" in str(failed)  # no waiting allowed: it fails, clearly
