"""Honest, fast failures (issue 12, points 9 and 11).

9: bad flag values, a bad --out and an incomplete checkpoint folder are exit 2 and one line,
   found before any model loads.
11: a model that is neither a folder, nor cached, nor reachable fails in a second, not after
   50 s of retries; an OpenAI-compatible server that accepts connections but never answers
   fails the preflight within options.preflight_timeout, and a hung completion within
   timeout x (max_retries + 1), as a failed call that leaves its record pending.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai import backends, cli, models
from cai.backends import CallFailed, Sampling, create
from cai.backends.specs import OpenAIOptions
from helpers import KEY, Stub, make_run, write_pipeline


def cai(*args):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "pydantic" not in result.stderr.lower() and "validation error" not in result.stderr.lower()
    return lines[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load (a backend, a tokenizer for training) fails the test."""
    from cai.train import trl_algos

    def loaded(*a, **k):
        pytest.fail("a model was loaded")

    monkeypatch.setattr(backends, "create", loaded)
    monkeypatch.setattr(trl_algos, "load_tokenizer", loaded)


@pytest.fixture
def hub_down(monkeypatch):
    """The hub is a closed loopback port: nothing here may touch the network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "http_proxy", "https_proxy", "HTTP_PROXY",
                "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return endpoint


# 9. Bad flag values: one line naming the flag, exit 2

@pytest.mark.parametrize("flag, value", [("--limit", 0), ("--limit", -3), ("--principles", -1),
                                         ("--principles", 0), ("--max-new-tokens", -5)])
def test_eval_flag_values_are_bad_input_in_one_line(tmp_path, no_model_load, flag, value):
    res = cai("eval", "--model", "embedded", "--out", tmp_path / "e", flag, value)
    assert res.exit_code == 2
    assert one_line(res) == f"error: command line: {flag}: must be at least 1"
    assert not (tmp_path / "e").exists()


# 9. A bad --out: exit 2, one line, before any model loads

def _bad_outs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    outs = {"an existing file": (afile, "is a file; name a folder"),
            "under /dev/null": (Path("/dev/null/x"), "/dev/null is not a folder")}
    if Path("/proc").is_dir():  # not writable even for root
        outs["read-only"] = (Path("/proc/cai-test"), "")
    return outs


def _commands(tmp_path: Path, out: Path) -> dict[str, list]:
    pipeline = write_pipeline(tmp_path / "p", n_prompts=2, backend="transformers", model="embedded")
    run = tmp_path / "run" / "out"
    if not run.exists():
        make_run(tmp_path / "run", n_prompts=6)
    return {
        "eval": ["eval", "--model", "embedded", "--out", out, "--limit", 1],
        "train": ["train", "sft", "--data", run, "--out", out, "--max-steps", 1],
        "generate": ["generate", pipeline, "--out", out],
        "audit": ["audit", pipeline, "--out", out, "--limit", 1],
    }


@pytest.mark.parametrize("command", ["eval", "train", "generate", "audit"])
def test_a_bad_out_is_one_line_before_any_model_loads(tmp_path, no_model_load, monkeypatch, command):
    def resolved(*a, **k):
        pytest.fail("a model was resolved before --out was checked")

    outs = _bad_outs(tmp_path)
    args = {name: _commands(tmp_path, out)[command] for name, (out, _) in outs.items()}
    monkeypatch.setattr(models, "resolve", resolved)
    for name, (out, why) in outs.items():
        res = cai(*args[name])
        assert res.exit_code == 2, (name, res.stderr)
        line = one_line(res)
        assert line.startswith(f"error: command line: --out: {out}: ") and why in line, (name, line)
    assert (tmp_path / "afile").read_text() == "mine"


def test_read_only_out_is_refused_by_a_real_permission_check(tmp_path, no_model_load):
    if os.geteuid() == 0:
        pytest.skip("root writes through chmod; /proc covers read-only above")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    res = cai("eval", "--model", "embedded", "--out", locked / "e", "--limit", 1)
    assert res.exit_code == 2 and "not writable" in one_line(res)


# 9. A checkpoint folder without tokenizer or weights: one line, exit 2, for generate, train and eval

def _checkpoint(folder: Path, *files: str) -> Path:
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text("{}")
    return folder


@pytest.mark.parametrize("files, missing", [
    (("config.json",), "no tokenizer files (tokenizer.json, tokenizer_config.json, tokenizer.model, vocab.json) "
                       "and no weights (*.safetensors or *.bin)"),
    (("config.json", "tokenizer.json", "training_args.bin"), "no weights (*.safetensors or *.bin)"),
    (("config.json", "model.safetensors"), "no tokenizer files"),
    (("tokenizer.json", "model.safetensors"), "not a transformers checkpoint (no config.json)"),
])
def test_an_incomplete_checkpoint_is_one_line_before_any_load(tmp_path, no_model_load, files, missing):
    ckpt = _checkpoint(tmp_path / "ckpt", *files)
    run = make_run(tmp_path / "run", n_prompts=6)
    pipeline = write_pipeline(tmp_path / "p", n_prompts=2, backend="transformers", model="embedded")
    for args in (["generate", pipeline, "--model", ckpt, "--out", tmp_path / "g"],
                 ["train", "sft", "--data", run, "--model", ckpt, "--out", tmp_path / "t"],
                 ["eval", "--model", ckpt, "--baseline", ckpt, "--judge-model", ckpt,
                  "--out", tmp_path / "e", "--limit", 1]):
        res = cai(*args)
        assert res.exit_code == 2, (args[0], res.stderr)
        lines = res.stderr.strip().splitlines()
        assert lines and all(line.startswith("error: --") and str(ckpt) in line and missing in line
                             for line in lines), res.stderr
        assert len(lines) == (3 if args[0] == "eval" else 1) and "Traceback" not in res.stderr
    assert not (tmp_path / "g").exists()


def test_a_complete_checkpoint_passes_the_check(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt", "config.json", "tokenizer_config.json", "pytorch_model.bin")
    assert models.resolve(str(ckpt)).path == str(ckpt.resolve())


# 11. Model names that are no folder and no reachable hub id fail at once

def test_a_local_looking_path_that_does_not_exist_is_a_bad_path(tmp_path, monkeypatch, no_model_load, hub_down):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for name in ("models/sft", "./sft", "/nowhere/sft", "~/nowhere-cai-test/sft", "a/b/c"):
        started = time.monotonic()
        res = cai("eval", "--model", name, "--out", tmp_path / "e", "--limit", 1)
        assert res.exit_code == 2 and one_line(res) == f"error: --model: {name}: no such checkpoint directory"
        assert time.monotonic() - started < 5


def test_an_unreachable_hub_id_fails_in_seconds_in_one_line(tmp_path, monkeypatch, no_model_load, hub_down):
    monkeypatch.chdir(tmp_path)
    pipeline = write_pipeline(tmp_path / "p", n_prompts=2, backend="transformers", model="embedded")
    run = make_run(tmp_path / "run", n_prompts=6)
    why = f"not a local folder, not in the Hugging Face cache, and {hub_down} cannot be reached"
    for args in (["eval", "--model", "org/name", "--out", tmp_path / "e", "--limit", 1],
                 ["generate", pipeline, "--model", "org/name", "--out", tmp_path / "g"],
                 ["train", "sft", "--data", run, "--model", "org/name", "--out", tmp_path / "t"],
                 ["generate", pipeline, "--model", "sft", "--out", tmp_path / "g"]):  # a bare name, no folder
        started = time.monotonic()
        res = cai(*args)
        assert res.exit_code == 2, res.stderr
        assert one_line(res) == f"error: --model: {args[args.index('--model') + 1]}: {why}"
        assert time.monotonic() - started < 8  # was ~50 s of retries
    assert not (tmp_path / "g").exists()


def test_offline_mode_fails_at_once_without_probing(tmp_path, monkeypatch, no_model_load, hub_down):
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(models, "_reachable", lambda endpoint: pytest.fail("probed the hub while offline"))
    res = cai("eval", "--model", "org/name", "--out", tmp_path / "e", "--limit", 1)
    assert res.exit_code == 2
    assert one_line(res) == ("error: --model: org/name: not a local folder and not in the Hugging Face cache "
                             "(TRANSFORMERS_OFFLINE is set)")


def test_a_cached_hub_model_loads_from_its_cached_folder_when_the_hub_is_out_of_reach(tmp_path, monkeypatch,
                                                                                       hub_down):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--org--name"
    snapshot = repo / "snapshots" / "abc123"
    _checkpoint(snapshot, "config.json", "tokenizer.json", "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    ref = models.resolve("org/name")
    assert ref.path == str(snapshot) and ref.identity == "org/name@main" and ref.revision is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.resolve("org/name").path == str(snapshot)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(models, "_reachable", lambda endpoint: True)  # online: the hub id, as before
    assert models.resolve("org/name") == models.ModelRef("org/name", "org/name@main", None)
    assert models.resolve("org/name@v2") == models.ModelRef("org/name", "org/name@v2", "v2")


# 11. An OpenAI-compatible server that accepts connections and never answers

class Silent:
    """A loopback server that accepts connections and never answers them."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server = Silent()
    yield server
    server.close()


@pytest.fixture
def hanging(monkeypatch):
    """A server that lists its model at once but never answers a completion (until the test ends)."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    release = threading.Event()
    server = Stub(fail=lambda body, attempt: release.wait(60) and None)
    yield server
    release.set()
    server.close()


def test_the_defaults_bound_a_hung_request_to_minutes_not_a_quarter_hour():
    opts = OpenAIOptions()
    assert (opts.preflight_timeout, opts.timeout, opts.max_retries) == (10.0, 60.0, 2)
    assert opts.timeout * (opts.max_retries + 1) <= 180  # was 120 s x 7 tries = 14 min


def test_a_silent_server_fails_the_preflight_within_its_timeout(silent):
    started = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        create("openai", model="stub-model", base_url=silent.url, preflight_timeout=1)
    assert time.monotonic() - started < 3  # one try: was 2 x 15 s
    assert str(info.value) == f"cannot reach {silent.url}/: no answer within 1 s (options.preflight_timeout)"


def test_a_silent_server_is_a_one_line_runtime_failure_before_the_run_folder(silent, tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=2, backend="openai", model="stub-model",
                              base_url=silent.url, preflight_timeout=1)
    started = time.monotonic()
    res = cai("generate", pipeline, "--out", tmp_path / "run")
    assert res.exit_code == 1
    assert "no answer within 1 s (options.preflight_timeout)" in one_line(res)
    assert time.monotonic() - started < 5 and not (tmp_path / "run").exists()


def test_a_hung_completion_fails_in_timeout_times_tries(hanging):
    backend = create("openai", model="stub-model", base_url=hanging.url, timeout=0.5, max_retries=1)
    started = time.monotonic()
    (result,) = backend.chat([[{"role": "user", "content": "q"}]], [Sampling(max_new_tokens=8)])
    elapsed = time.monotonic() - started
    assert isinstance(result, CallFailed)
    assert str(result) == ("APITimeoutError: no answer within 0.5 s, 2 tries "
                           "(options.timeout, options.max_retries)")
    assert 1.0 <= elapsed < 4  # 2 x 0.5 s plus the client's backoff
    assert backend.stats == {"requests": 1, "attempts": 2, "retries": 1, "failed": 1, "rate_limited": 0}


def test_a_server_that_stops_answering_is_not_sent_the_rest_of_the_batch(hanging):
    backend = create("openai", model="stub-model", base_url=hanging.url, timeout=0.3, max_retries=0,
                     concurrency=3)
    started = time.monotonic()
    out = backend.chat([[{"role": "user", "content": f"q{i}"}] for i in range(30)], [Sampling()] * 30)
    assert all(isinstance(r, CallFailed) for r in out)
    assert time.monotonic() - started < 3  # one wave of timeouts, not ten
    assert hanging.requests <= 6 and any("not sent: the server stopped answering" in str(r) for r in out)


def test_hung_completions_leave_their_records_pending_and_exit_1(hanging, tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=4, backend="openai", model="stub-model",
                              base_url=hanging.url, timeout=0.3, max_retries=0, concurrency=2)
    started = time.monotonic()
    res = cai("generate", pipeline, "--out", tmp_path / "run")
    assert res.exit_code == 1 and "Traceback" not in res.stderr, res.stderr
    assert time.monotonic() - started < 10
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary["counts"]["failed"] == 4 and summary["counts"]["records"] == 0
