"""The Batch API backend against a loopback /files + /batches server with the real life cycle:
the same records as online, one batch per stage step, re-attach after a kill, only failed calls resent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from batch_server import BatchServer
from cai.backends.openai_batch import split
from helpers import KEY, Stub, records_by_id, write_pipeline

pytestmark = pytest.mark.timeout(300)


def _pipeline(tmp_path, url, n=6, **fields):
    return write_pipeline(tmp_path, n_prompts=n, backend="openai", model="smollm2", base_url=url, rounds=1,
                          batch=True, batch_poll_seconds=0.1, **fields)


def _cli(pipeline, *args):
    return subprocess.Popen([sys.executable, "-m", "cai", "generate", str(pipeline), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OPENAI_API_KEY": KEY})


def _run(pipeline, *args):
    proc = _cli(pipeline, *args)
    out, err = proc.communicate(timeout=240)
    return proc.returncode, err


def _content(out):
    return {k: [{f: v for f, v in r.items() if f != "created"} for r in recs] for k, recs in records_by_id(out).items()}


def test_a_batch_run_is_one_batch_per_step_and_gives_the_online_records(tmp_path):
    server, online = BatchServer(model="smollm2"), Stub(model="smollm2")
    rc, err = _run(_pipeline(tmp_path / "b", server.url))
    assert rc == 0, err
    rc, err = _run(write_pipeline(tmp_path / "o", n_prompts=6, backend="openai", model="smollm2", base_url=online.url,
                                  rounds=1))
    assert rc == 0, err
    assert _content(tmp_path / "b" / "out") == _content(tmp_path / "o" / "out")
    summary = json.loads((tmp_path / "b" / "out" / "run.json").read_text())
    # respond, critique, revise: three batches of six, nothing sent online.
    assert len(server.created) == 3 and server.request_lines == 18 == summary["counts"]["model_calls"]
    stats = summary["backend_stats"]
    assert stats["batches_submitted"] == 3 and stats["batch_requests"] == 18 and stats["requests"] == 0
    assert len(list((tmp_path / "b" / "out" / "batches").glob("*.json"))) == 3  # the ids, kept in the run folder


def test_a_killed_run_reattaches_to_its_batch_in_flight_and_pays_once(tmp_path):
    server = BatchServer(model="smollm2", latency=0.4)
    pipeline = _pipeline(tmp_path, server.url)
    first = _cli(pipeline)
    deadline = time.time() + 60
    while not any(b["status"] == "in_progress" for b in server.batches.values()):
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert server.created == ["batch_0"]
    rc, err = _run(pipeline)
    assert rc == 0, err
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    assert summary["backend_stats"]["batches_reattached"] == 1  # the respond batch, found again
    assert server.created == ["batch_0", "batch_1", "batch_2"] and server.request_lines == 18  # nothing twice
    assert sorted(records_by_id(tmp_path / "out")) == [f"p-{i:05d}" for i in range(6)]


@pytest.mark.parametrize("mode", ["partial", "expire", "fail"])
def test_unanswered_requests_fail_their_records_and_only_they_are_sent_again(tmp_path, mode):
    server = BatchServer(model="smollm2", mode=mode)
    pipeline = _pipeline(tmp_path, server.url)
    rc, err = _run(pipeline)
    assert rc == 1
    first = json.loads((tmp_path / "out" / "run.json").read_text())
    failed = first["counts"]["failed"]
    assert failed > 0 and first["status"] == "incomplete"
    reason = {"partial": "injected server error", "expire": "expired", "fail": "injected validation failure"}[mode]
    assert reason in first["counts"]["errors"][0]["error"]
    sent = server.request_lines
    server.mode = None
    rc, err = _run(pipeline)
    assert rc == 0, err
    again = json.loads((tmp_path / "out" / "run.json").read_text())
    assert again["counts"]["records"] == 6 and again["counts"]["resumed"] == 6 - failed
    # Every call the first run got an answer to came from the cache: only the others were sent again.
    answered = first["counts"]["model_calls"] - first["counts"]["failed_calls"]
    assert server.request_lines - sent == again["counts"]["model_calls"] == 18 - answered
    assert (answered > 0) == (mode != "fail")


def test_request_files_are_split_at_the_providers_limits():
    lines = [json.dumps({"n": i, "pad": "x" * 50}) for i in range(10)]
    assert [len(p) for p in split(lines, max_requests=4)] == [4, 4, 2]
    assert [len(p) for p in split(lines, max_bytes=3 * 70)] == [3, 3, 3, 1]
    assert sum(split(lines), []) == lines


def _answer_like_run_batch(requests, results):
    """What `vllm run-batch` writes for a request file, with the echo model of helpers.Stub."""
    with open(results, "w") as out:
        for line in open(requests):
            req = json.loads(line)
            text = "echo: " + req["body"]["messages"][-1]["content"]
            body = {"id": "c", "object": "chat.completion", "created": 0, "model": req["body"]["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}
            out.write(json.dumps({"id": "b", "custom_id": req["custom_id"], "error": None,
                                  "response": {"status_code": 200, "request_id": "r", "body": body}}) + "\n")


def test_export_answer_import_stage_by_stage_gives_the_online_records(tmp_path):
    online = Stub(model="m")
    rc, err = _run(write_pipeline(tmp_path / "o", n_prompts=5, backend="openai", model="m", base_url=online.url,
                                  rounds=1))
    assert rc == 0, err
    pipeline = write_pipeline(tmp_path / "x", n_prompts=5, backend="openai", model="m", rounds=1,
                              base_url="http://unused.invalid/v1", api_key_env="CAI_NO_SUCH_KEY")
    folder, sizes = tmp_path / "requests", []
    for _ in range(5):
        rc, err = _run(pipeline, "--export-batch", str(folder))
        assert rc == 0, err
        lines = (folder / "requests.jsonl").read_text().splitlines()
        sizes.append(len(lines))
        if not lines:
            assert "nothing left to export" in err
            break
        assert "--import-batch" in err
        text = "".join(lines)
        assert "api_key" not in text and KEY not in text and "unused.invalid" not in text  # no secret, no URL
        _answer_like_run_batch(folder / "requests.jsonl", tmp_path / "results.jsonl")
        rc, err = _run(pipeline, "--import-batch", str(tmp_path / "results.jsonl"))
        assert rc == 0 and "5 answers imported" in err, err
    assert sizes == [5, 5, 5, 0]  # respond, then critique, then revise, then nothing
    assert _content(tmp_path / "x" / "out") == _content(tmp_path / "o" / "out")
    run = json.loads((tmp_path / "x" / "out" / "run.json").read_text())
    assert run["status"] == "complete" and run["counts"]["records"] == 5


def test_export_never_writes_into_a_folder_it_did_not_make(tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=2, backend="openai", model="m", rounds=1)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    rc, err = _run(pipeline, "--export-batch", str(mine))
    assert rc == 2 and "was not made by `cai generate --export-batch`" in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    scripted = write_pipeline(tmp_path / "s", n_prompts=2)
    rc, err = _run(scripted, "--export-batch", str(tmp_path / "new"))
    assert rc == 2 and "need the openai backend" in err
