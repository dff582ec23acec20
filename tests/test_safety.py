"""Nothing lost, nothing leaked: misuse a real user commits in a week (issue 12, points 1-8 and 12).

Each test reproduces a hole on the code before the fix: a dry run that deleted a project's
files, two writers on one run, a damaged shard or version.json or cache that blocked a run for
good, a full disk that hid its error, and secrets or local paths that reached files, the Hub
upload or the terminal.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai import cli, hub
from cai.backends.scripted import ScriptedBackend
from cai.records import RecordStore
from helpers import KEY, Stub, make_run, run, write_pipeline

HF_CANARY = "hf_" + "Zq8" * 12
BODY_CANARY = "sk-bodycanary-" + "9x" * 10
QUIET_CANARY = "plainsecretvalue-4711"  # no key-like shape: only its variable's name says it is secret


def cai(*args, env=None):
    """The CLI in-process; stderr apart from stdout."""
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        return CliRunner().invoke(cli.app, [str(a) for a in args])
    finally:
        os.environ.clear()
        os.environ.update(old)


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def error_line(result) -> str:
    """The one error line of a command that ran (progress lines may come before it)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# 1. push --dry-run never deletes what it did not make

def test_dry_run_refuses_a_folder_it_did_not_make_and_the_run_itself(tmp_path):
    out = make_run(tmp_path / "r", n_prompts=6)
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "README.md").write_text("my project")
    (project / "data" / "mine.jsonl").write_text("{}\n")
    before_project, before_run = tree(project), tree(out)
    for target in (project, out, out / "upload", out / "sft"):
        res = cai("push", out, "--repo-id", "org/name", "--dry-run", target)
        assert res.exit_code == 2, (target, res.stderr)
        assert "--dry-run" in one_line(res)
    assert tree(project) == before_project and tree(out) == before_run

    fresh = tmp_path / "upload"
    for _ in range(2):  # a folder an earlier dry run made is replaced, not refused
        res = cai("push", out, "--repo-id", "org/name", "--dry-run", fresh)
        assert res.exit_code == 0, res.stderr
    assert (fresh / hub.DRY_RUN_MARKER).is_file() and (fresh / "README.md").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cai("push", out, "--repo-id", "org/name", "--dry-run", empty).exit_code == 0
    assert cai("push", out, "--repo-id", "org/name", "--dry-run", tmp_path / "r" / "pipeline.yaml").exit_code == 2


# 2. one writer per run folder; readers keep working

HOLD = """
import sys, time
from cai.rundir import lock
with lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_gets_exit_2_naming_the_holder_and_kill_9_leaves_no_stale_lock(tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=6)
    out = tmp_path / "out"
    run(pipeline)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = tree(out / "records")
        res = cai("generate", pipeline, "--backend", "scripted", "--model", "echo")
        assert res.exit_code == 2
        assert f"in use by pid {holder.pid}" in one_line(res)
        assert tree(out / "records") == before
        # An audit into the same folder is a writer too; readers are not.
        assert cai("audit", pipeline, "--out", out, "--limit", "1").exit_code == 2
        assert cai("push", out, "--repo-id", "org/name", "--dry-run", tmp_path / "up").exit_code == 0
        assert cai("diff", out).exit_code in (0, 2)  # one version: nothing to diff, but never "in use"
        assert "in use" not in cai("diff", out).stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    res = cai("generate", pipeline, "--backend", "scripted", "--model", "echo")
    assert res.exit_code == 0, res.stderr


def test_two_generates_started_together_never_both_write(tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=40, chunk_size=4)
    slow = f"""
import sys, time
from cai.backends.scripted import ScriptedBackend
from cai.config import load_pipeline
from cai.generate import generate
from cai.errors import InputError
class Slow(ScriptedBackend):
    def chat(self, conversations, sampling, progress=None):
        time.sleep(0.05)
        return super().chat(conversations, sampling, progress)
try:
    generate(load_pipeline({str(pipeline)!r}), backend=Slow("echo"))
except InputError as exc:
    print(exc); sys.exit(2)
"""
    procs = [subprocess.Popen([sys.executable, "-c", slow], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(out for code, out, _ in results if code == 2)
    assert "in use by pid" in loser
    ids = [rec["id"] for rec in RecordStore(tmp_path / "out" / "records")]
    assert len(ids) == len(set(ids)) == 40  # no duplicated record lines


# 3. a damaged shard or version.json is moved aside, never a dead end

def _cut(shard: Path, marker: str, keep_after: bool) -> int:
    """Cut the first line holding `marker` just after it (keep_after) or just before it; return its line number."""
    lines = shard.read_text().splitlines(keepends=True)
    n = next(i for i, line in enumerate(lines) if marker in line)
    at = lines[n].index(marker) + (len(marker) if keep_after else 0)
    lines[n] = lines[n][:at] + "\n"
    shard.write_text("".join(lines))
    return n + 1


@pytest.mark.parametrize("after_fingerprint", [True, False])
def test_a_cut_record_line_is_quarantined_and_its_examples_recomputed_from_the_cache(tmp_path, after_fingerprint):
    pipeline = write_pipeline(tmp_path, n_prompts=12, chunk_size=4)
    first = run(pipeline)
    out = tmp_path / "out"
    shard = RecordStore(out / "records").shards()[1]
    line = _cut(shard, '"fingerprint": "' if after_fingerprint else '"prompt": "Question', after_fingerprint)

    planned = cai("generate", pipeline, "--plan")  # --plan looks but moves nothing
    assert planned.exit_code == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["records_rebuilt"] == 4 and plan["damaged_shards"][0]["line"] == line and shard.exists()

    res = cai("generate", pipeline)
    assert res.exit_code == 0, res.stderr
    assert f"records/{shard.name} line {line} is damaged" in res.stderr
    moved = out / "records" / "quarantine" / shard.name
    assert moved.is_file() and not shard.exists()
    summary = json.loads((out / "run.json").read_text())
    assert summary["counts"]["quarantined"] == 1 and summary["counts"]["resumed"] == 8
    assert summary["quarantined"]["records"][0]["shard"] == shard.name
    assert summary["quarantined"]["records"][0]["line"] == line
    assert summary["counts"]["model_calls"] == 0 and summary["counts"]["cache_hits"] > 0
    assert summary["counts"]["records"] == first["counts"]["records"] == 12
    again = cai("generate", pipeline)  # nothing left to quarantine or recompute
    assert again.exit_code == 0 and "damaged" not in again.stderr
    assert json.loads((out / "run.json").read_text())["counts"]["generated"] == 0


def test_a_corrupt_version_json_is_skipped_by_readers_and_moved_aside_by_the_next_generate(tmp_path):
    out = make_run(tmp_path, n_prompts=6)
    (version,) = [d for d in (out / "versions").iterdir() if d.is_dir()]
    (version / "version.json").write_text('{"constitution": {"sha256": "ab')
    pushed = cai("push", out, "--repo-id", "org/name", "--dry-run", tmp_path / "up")
    assert pushed.exit_code == 0, pushed.stderr
    assert f"{version / 'version.json'}:1: not valid JSON" in pushed.stderr and "Traceback" not in pushed.stderr
    diffed = cai("diff", out)
    assert diffed.exit_code == 2 and "JSONDecodeError" not in diffed.stderr
    assert version.exists()  # readers take no lock: they move nothing
    res = cai("generate", tmp_path / "pipeline.yaml")
    assert res.exit_code == 0, res.stderr
    summary = json.loads((out / "run.json").read_text())
    (moved,) = summary["quarantined"]["versions"]
    assert moved["version"] == version.name and (out / moved["moved_to"]).is_dir()
    assert json.loads((version / "version.json").read_text())["constitution"]["sha256"]  # rebuilt whole


# 4. a full disk: the first error is reported, no stray temp file, the next run recovers

def test_disk_full_reports_the_first_error_and_the_next_run_recovers(tmp_path, monkeypatch):
    pipeline = write_pipeline(tmp_path, n_prompts=12, chunk_size=4)
    out = tmp_path / "out"
    full = {"on": False}
    appended = RecordStore.append

    def append(self, records):
        if self.dir.parent == out and len(self.shards()) >= 1:
            full["on"] = True
            raise OSError(errno.ENOSPC, "No space left on device", str(self.dir / ".shard-x.tmp"))
        return appended(self, records)

    def replace(src, dst):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os_replace(src, dst)

    os_replace = os.replace
    monkeypatch.setattr(RecordStore, "append", append)
    monkeypatch.setattr("cai.runfiles.os.replace", replace)
    res = cai("generate", pipeline)
    assert res.exit_code == 1
    assert "No space left on device" in error_line(res)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".run.json.")]
    monkeypatch.undo()

    res = cai("generate", pipeline)
    assert res.exit_code == 0, res.stderr
    summary = json.loads((out / "run.json").read_text())
    assert summary["status"] == "complete" and summary["counts"]["records"] == 12
    assert summary["counts"]["resumed"] == 4 and summary["counts"]["generated"] == 8
    ids = [rec["id"] for rec in RecordStore(out / "records")]
    assert len(ids) == len(set(ids)) == 12


def test_a_real_full_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and permission to mount a tmpfs")
    try:
        pipeline = write_pipeline(tmp_path / "p", n_prompts=400, chunk_size=50, out=str(mnt / "run"))
        res = cai("generate", pipeline)
        assert res.exit_code != 0 and ("No space left" in res.stderr or "disk is full" in res.stderr), res.stderr
        assert "Traceback" not in res.stderr
        assert not [p for p in (mnt / "run").rglob(".*") if p.name.startswith((".run.json.", ".shard-"))]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# 5. a corrupt cache: a finished run does not need it; otherwise one line says what to do

def test_a_corrupt_cache_names_itself_and_a_finished_run_never_opens_it(tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=6)
    run(pipeline)
    out = tmp_path / "out"
    for extra in out.glob("cache.sqlite-*"):
        extra.unlink()
    (out / "cache.sqlite").write_bytes(b"this is not a database" * 100)
    finished = cai("generate", pipeline)
    assert finished.exit_code == 0, finished.stderr
    for shard in RecordStore(out / "records").shards():
        shard.unlink()
    res = cai("generate", pipeline)
    assert res.exit_code == 2
    line = one_line(res)
    assert str(out / "cache.sqlite") in line and "--no-cache" in line and "move it aside" in line
    assert cai("generate", pipeline, "--no-cache").exit_code == 0


# 6-8. secrets and local paths: canaries grepped in every file, the upload and all output

def test_no_secret_or_local_path_reaches_files_the_upload_or_the_terminal(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_CANARY)
    canaries = (KEY, HF_CANARY, BODY_CANARY, QUIET_CANARY)
    def fail(body, attempt):  # the first request for one prompt is refused, echoing the headers back
        if attempt == 1 and "Question number 0" in body["messages"][-1]["content"]:
            return 400, (), f"bad request; got headers Authorization=Bearer {QUIET_CANARY} extra={BODY_CANARY} {KEY}"
        return None

    server = Stub(fail)
    try:
        # The key is read from a variable of the user's naming; its value has no key-like shape.
        env = {"OPENAI_API_KEY": KEY, "MY_LLM_TOKEN": QUIET_CANARY}
        pipeline = write_pipeline(tmp_path, n_prompts=4, backend="openai", model="stub-model",
                                  api_key_env="MY_LLM_TOKEN",
                                  extra_body={"api_key": BODY_CANARY, "note": BODY_CANARY, "seed_hint": 3})
        res = cai("generate", pipeline, "--base-url", server.url, env=env)
        assert res.exit_code == 1, res.stderr  # one prompt's call was refused: left for the next run
        assert "Authorization=<redacted>" in res.stderr  # the server's words reach the user, the key does not
        again = cai("generate", pipeline, "--base-url", server.url, env=env)
        assert again.exit_code == 0, again.stderr
        up = tmp_path / "upload"
        pushed = cai("push", tmp_path / "out", "--repo-id", "org/name", "--dry-run", up, env=env)
        assert pushed.exit_code == 0, pushed.stderr
    finally:
        server.close()
    output = "".join(r.stdout + r.stderr for r in (res, again, pushed))
    for canary in canaries:
        assert canary not in output, canary
    for folder in (tmp_path / "out", up):
        for name, data in tree(folder).items():
            for canary in canaries:
                assert canary.encode() not in data, (name, canary)
    identity = json.loads((tmp_path / "out" / "run.json").read_text())["model"]["identity"]
    assert identity.startswith("api:stub-model|") and '"seed_hint": 3' in identity and "<secret" in identity
    # What is published names no place on this machine.
    published = (up / "run.json").read_text() + (up / "README.md").read_text()
    assert str(tmp_path) not in published and str(Path.home()) not in published
    assert json.loads((up / "run.json").read_text())["constitution_path"] == "constitution.yaml"


def test_identities_without_secrets_are_unchanged_and_distinct_secrets_stay_distinct():
    from cai.backends.specs import identity

    assert identity("openai", "m", extra_body={"repeat_penalty": 1.0}) == 'api:m|{"repeat_penalty": 1.0}'
    a = identity("openai", "m", extra_body={"x": "sk-" + "a" * 20})
    b = identity("openai", "m", extra_body={"x": "sk-" + "b" * 20})
    assert a != b and "sk-" not in a + b
    # A key authenticates, it does not change answers: rotating it keeps the cache.
    assert identity("openai", "m", extra_body={"api_key": "k1" * 8}) == identity("openai", "m", extra_body={"api_key": "k2" * 8})


# 12. honest messages when there is nothing to train on or every call failed

def test_all_flagged_run_says_so_in_train_and_push(tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=5)
    run(pipeline, backend=ScriptedBackend("empty", script=lambda conversation: ""))
    out = tmp_path / "out"
    for args in (("train", "dpo", "--data", out), ("push", out, "--repo-id", "org/n", "--dry-run", tmp_path / "up")):
        res = cai(*args)
        assert res.exit_code == 2
        assert "0 pairs: all 5 records flagged (empty_answer" in one_line(res)


def test_an_api_that_rejects_every_request_is_not_called_a_quality_problem(tmp_path):
    server = Stub(lambda body, attempt: (401, (), "invalid api key"))
    try:
        pipeline = write_pipeline(tmp_path, n_prompts=3, backend="openai", model="stub-model")
        res = cai("generate", pipeline, "--base-url", server.url, env={"OPENAI_API_KEY": KEY})
    finally:
        server.close()
    assert res.exit_code == 1
    assert "all 3 prompts failed" in res.stderr and "quality gates" not in res.stderr
    assert res.stdout.strip() == ""  # no dataset path to point at


def test_a_writer_that_fails_on_bad_input_leaves_no_folder_behind(tmp_path):
    out = tmp_path / "eval-out"
    res = cai("eval", "--model", tmp_path / "nope", "--out", out)
    assert res.exit_code == 2 and "--model" in one_line(res)
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert cai("eval", "--model", tmp_path / "nope", "--out", kept).exit_code == 2
    assert kept.is_dir()  # a folder the user made is never removed
