"""Engine behaviour on the scripted backend: stage batching, the call cache, resume and kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from cai.backends.scripted import ScriptedBackend
from cai.records import RecordStore
from helpers import PRINCIPLES, records_by_id, run, write_constitution, write_pipeline


class Recorder:
    """Wraps a backend and records the size of every batch it is handed."""

    def __init__(self, inner):
        self.inner = inner
        self.identity = inner.identity
        self.supports_logprobs = inner.supports_logprobs
        self.batches: list[int] = []

    def chat(self, conversations, sampling, progress=None):
        self.batches.append(len(conversations))
        return self.inner.chat(conversations, sampling, progress)

    def choice_logprobs(self, conversations, choices, progress=None):
        return self.inner.choice_logprobs(conversations, choices, progress)


def test_stages_are_whole_batches_and_records_complete(tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=10, chunk_size=4)
    backend = Recorder(ScriptedBackend("echo"))
    summary = run(pipeline, backend)
    # 10 examples in chunks of 4, 5 stages each (respond + 2 x critique/revise).
    assert backend.batches == [4] * 5 + [4] * 5 + [2] * 5
    assert summary["counts"]["model_calls"] == 50
    recs = records_by_id(tmp_path / "out")
    assert len(recs) == 10 and all(len(v) == 1 for v in recs.values())
    rec = next(iter(recs.values()))[0]
    assert [r["round"] for r in rec["rounds"]] == [1, 2]
    assert rec["final"] == rec["rounds"][-1]["revision"]
    assert {r["principle_id"] for r in rec["rounds"]} <= {p["id"] for p in PRINCIPLES}


def test_rerun_of_finished_run_makes_no_model_calls(tmp_path):
    pipeline = write_pipeline(tmp_path)
    first = run(pipeline)
    assert first["counts"]["model_calls"] == 12 * 5
    backend = Recorder(ScriptedBackend("echo"))
    again = run(pipeline, backend)
    assert again["counts"]["model_calls"] == 0 and backend.batches == []
    assert again["counts"]["resumed"] == 12
    assert again["counts"]["pairs"] == first["counts"]["pairs"]


def test_cache_answers_when_records_are_lost(tmp_path):
    pipeline = write_pipeline(tmp_path)
    run(pipeline)
    for shard in (tmp_path / "out" / "records").iterdir():
        shard.unlink()
    again = run(pipeline)
    assert again["counts"]["model_calls"] == 0
    assert again["counts"]["cache_hits"] == 12 * 5
    assert len(records_by_id(tmp_path / "out")) == 12


def test_no_cache_recomputes_everything(tmp_path):
    pipeline = write_pipeline(tmp_path)
    run(pipeline)
    for shard in (tmp_path / "out" / "records").iterdir():
        shard.unlink()
    again = run(pipeline, cache=False)
    assert again["counts"]["model_calls"] == 12 * 5 and again["counts"]["cache_hits"] == 0


def test_editing_one_principle_recomputes_only_rows_that_used_it(tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=40)
    run(pipeline)
    before = {i: v[-1] for i, v in records_by_id(tmp_path / "out").items()}
    users = {i for i, r in before.items() if "privacy" in [x["principle_id"] for x in r["rounds"]]}
    assert 0 < len(users) < 40
    edited = [dict(p) for p in PRINCIPLES]
    edited[3]["critique"] = "Name every piece of personal data the last response exposes."
    write_constitution(tmp_path / "constitution.yaml", edited)
    summary = run(pipeline)
    after = {r["id"]: r for r in RecordStore(tmp_path / "out" / "records").current(summary["fingerprint"])}
    assert len(after) == 40
    # The same principles are drawn; rows that never drew the edited one are untouched.
    for i, rec in after.items():
        assert [x["principle_id"] for x in rec["rounds"]] == [x["principle_id"] for x in before[i]["rounds"]]
        if i not in users:
            assert rec["rounds"] == before[i]["rounds"] and rec["initial"] == before[i]["initial"]
        else:
            k = [x["principle_id"] for x in rec["rounds"]].index("privacy")
            assert rec["rounds"][k]["critique_request"] == edited[3]["critique"]
            assert rec["rounds"][k]["critique"] != before[i]["rounds"][k]["critique"]
    # Calls before the first round that used the edited principle are cache hits.
    first_use = [[x["principle_id"] for x in before[i]["rounds"]].index("privacy") for i in users]
    expected = sum(2 * (2 - r) for r in first_use)  # critique + revise from that round on
    assert summary["counts"]["model_calls"] == expected


def test_dataset_is_rebuilt_from_records_only(tmp_path):
    pipeline = write_pipeline(tmp_path)
    summary = run(pipeline)
    run_json = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_json["status"] == "complete"
    assert run_json["constitution_sha256"] == summary["constitution"]["sha256"]
    assert run_json["constitution_path"] == str((tmp_path / "constitution.yaml").resolve())
    assert run_json["counts"]["model_calls"] == 12 * 5 and run_json["counts"]["cache_hits"] == 0
    assert run_json["counts"]["records"] == 12
    assert set(run_json["timings"]["stages"]) == {"respond", "critique", "revise"}
    assert "torch" in run_json["versions"]


_KILL_TARGET = """
import sys, time
from cai.backends.scripted import ScriptedBackend, echo_script
from cai.config import load_pipeline
from cai.generate import generate

def slow(conv):
    time.sleep(0.002)
    return echo_script(conv)

generate(load_pipeline(sys.argv[1]), backend=ScriptedBackend("echo", script=slow))
"""


def test_kill_9_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path):
    pipeline = write_pipeline(tmp_path / "run", n_prompts=300, chunk_size=10)
    target = tmp_path / "target.py"
    target.write_text(_KILL_TARGET)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    records = tmp_path / "run" / "out" / "records"
    for delay in (1.5, 2.5):  # kill twice, at different points
        proc = subprocess.Popen([sys.executable, str(target), str(pipeline)], env=env)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
            if records.is_dir() and len(list(records.glob("shard-*"))) >= 1:
                time.sleep(delay * 0.3)
                break
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    partial = records_by_id(tmp_path / "run" / "out")
    assert 0 < len(partial) < 300
    subprocess.run([sys.executable, str(target), str(pipeline)], env=env, check=True, timeout=300)
    recs = records_by_id(tmp_path / "run" / "out")
    assert sorted(recs) == [f"p-{i:05d}" for i in range(300)]
    assert all(len(v) == 1 for v in recs.values())
    assert not list(records.glob(".shard-*"))
    # The resumed dataset equals a clean run's.
    clean = write_pipeline(tmp_path / "clean", n_prompts=300, chunk_size=10)
    run(clean)
    import datasets

    def rows(d):
        ds = datasets.load_dataset(str(d / "out" / "dataset"))
        return sorted((r["id"], r["chosen"][0]["content"]) for split in ds.values() for r in split)

    assert rows(tmp_path / "run") == rows(tmp_path / "clean")


class Flaky(Recorder):
    """Fails every call for the chosen example ids at the chosen stage."""

    def __init__(self, inner, fail_ids, stage_marker):
        super().__init__(inner)
        self.fail_ids, self.marker = fail_ids, stage_marker

    def chat(self, conversations, sampling, progress=None):
        out = super().chat(conversations, sampling, progress)
        from cai.backends import CallFailed

        return [CallFailed("HTTP 503 after 5 retries")
                if any(f"number {n} " in c[-1]["content"] for n in self.fail_ids) and self.marker(c) else o
                for c, o in zip(conversations, out)]


def test_failed_calls_leave_examples_pending_and_the_next_run_retries_them(tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=10)
    # Fail the answer ("respond": the only stage whose last turn is the prompt) for prompts 3 and 7.
    flaky = Flaky(ScriptedBackend("echo"), {3, 7}, lambda conv: len(conv) == 1)
    first = run(pipeline, flaky)
    assert first["status"] == "incomplete"
    assert first["counts"]["failed"] == 2 and first["counts"]["failed_calls"] == 2
    assert first["counts"]["errors"][0]["stage"] == "respond"
    assert "503" in first["counts"]["errors"][0]["error"]
    assert sorted(records_by_id(tmp_path / "out")) == [f"p-{i:05d}" for i in range(10) if i not in (3, 7)]
    healthy = Recorder(ScriptedBackend("echo"))
    second = run(pipeline, healthy)
    assert second["status"] == "complete" and second["counts"]["failed"] == 0
    assert second["counts"]["model_calls"] == 2 * 5  # only the two failed examples, all stages
    recs = records_by_id(tmp_path / "out")
    assert len(recs) == 10 and all(len(v) == 1 for v in recs.values())


def test_cli_exits_1_and_says_how_to_retry_when_calls_fail(tmp_path, monkeypatch, capsys):
    from typer.testing import CliRunner

    from cai import cli, generate as gen

    pipeline = write_pipeline(tmp_path, n_prompts=4)
    flaky = Flaky(ScriptedBackend("echo"), {1}, lambda conv: len(conv) == 1)
    monkeypatch.setattr(gen, "LazyBackend", lambda spec, flag="--model": flaky)
    result = CliRunner().invoke(cli.app, ["generate", str(pipeline)])
    assert result.exit_code == 1
    err = result.stderr + capsys.readouterr().err
    assert "1 prompts failed" in err and "run the same command again" in err
