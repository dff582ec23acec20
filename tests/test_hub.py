"""`cai push`: the dry-run folder, `load_dataset` on it, the upload through HfApi to a loopback
Hub that records requests, re-push updating instead of duplicating, secrets, and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import datasets
import pytest

from cai import hub
from cai.redact import REDACTED
from helpers import PRINCIPLES, make_run, run, write_constitution
from hub_server import FakeHub

CANARY = "hf_CANARYcanaryCANARYcanary0123456789"
KEY_CANARY = "sk-KEYCANARYkeycanary0123456789"


def dataset_ids(path) -> dict[str, list[str]]:
    ds = datasets.load_dataset(str(path))
    return {split: sorted(d["id"]) for split, d in ds.items()}


def test_dry_run_writes_exactly_the_upload_and_load_dataset_reads_it(tmp_path):
    out = make_run(tmp_path / "r", n_prompts=24)
    files = hub.dry_run(out, tmp_path / "up", "org/name")
    on_disk = sorted(p.relative_to(tmp_path / "up").as_posix() for p in (tmp_path / "up").rglob("*") if p.is_file())
    # Beside the upload, only the marker that lets the next dry run replace this folder.
    assert on_disk == sorted([*files, hub.DRY_RUN_MARKER])
    assert {"README.md", "constitution.yaml", "run.json", "images/principle_usage.png"} <= set(files)
    assert any(f.startswith("data/train-") and f.endswith(".parquet") for f in files)
    assert (tmp_path / "up" / "images/principle_usage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The uploaded constitution is the run's, byte for byte.
    assert (tmp_path / "up" / "constitution.yaml").read_text() == (tmp_path / "r" / "constitution.yaml").read_text()
    prefs = dataset_ids(tmp_path / "up")
    assert prefs == dataset_ids(out / "dataset")
    sft = datasets.load_dataset(str(tmp_path / "up"), "sft")
    assert sorted(sft["train"]["id"]) == prefs["train"]
    assert "messages" in sft["train"].column_names
    run_json = json.loads((tmp_path / "up" / "run.json").read_text())
    assert run_json["constitution_sha256"] == json.loads((out / "run.json").read_text())["constitution_sha256"]


def test_two_upload_folders_with_one_name_load_their_own_rows(tmp_path):
    """`datasets` caches by folder name + README configs: two runs' folders named alike must not collide."""
    a = make_run(tmp_path / "a", n_prompts=8)
    b = make_run(tmp_path / "b", n_prompts=20)
    hub.dry_run(a, tmp_path / "x" / "upload", "org/name")
    hub.dry_run(b, tmp_path / "y" / "upload", "org/name")
    ids_a = {i for s in dataset_ids(tmp_path / "x" / "upload").values() for i in s}
    ids_b = {i for s in dataset_ids(tmp_path / "y" / "upload").values() for i in s}
    assert len(ids_a) == 8 and len(ids_b) == 20
    # Same run dir re-dry-run after an edit into the same folder: the new rows, not the cached ones.
    edited = [dict(p) for p in PRINCIPLES]
    for p in edited:
        p["revision"] = p["revision"] + " Keep it short."
    write_constitution(tmp_path / "a" / "constitution.yaml", edited)
    run(tmp_path / "a" / "pipeline.yaml")
    hub.dry_run(a, tmp_path / "x" / "upload", "org/name")
    shas = {r["constitution_sha256"] for s in datasets.load_dataset(str(tmp_path / "x" / "upload")).values() for r in s}
    assert shas == {json.loads((a / "run.json").read_text())["constitution_sha256"]}


def test_run_json_is_scrubbed_and_no_written_file_holds_a_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", CANARY)
    extra_body = {"api_key": KEY_CANARY, "headers": {"Authorization": f"Bearer {KEY_CANARY}"},
                  "note": f"token {CANARY} pasted by mistake"}
    # A judge spec that is never loaded (no --feedback), but its options are in run.json's config.
    out = make_run(tmp_path / "r", judge={"backend": "openai", "model": "m", "options": {"extra_body": extra_body}})
    # The run's own run.json is scrubbed when written, and the pushed copy again.
    assert KEY_CANARY not in (out / "run.json").read_text() and CANARY not in (out / "run.json").read_text()
    files = hub.dry_run(out, tmp_path / "up", "org/name")
    for f in files:
        data = (tmp_path / "up" / f).read_bytes()
        assert CANARY.encode() not in data and KEY_CANARY.encode() not in data, f
    scrubbed = json.loads((tmp_path / "up" / "run.json").read_text())
    assert scrubbed["config"]["judge"]["options"]["extra_body"]["api_key"] == REDACTED
    assert scrubbed["config"]["judge"]["options"]["api_key_env"] == "OPENAI_API_KEY"  # a variable's name is not a secret
    assert scrubbed["config"]["sampling"]["respond"]["max_new_tokens"] > 0  # `*_tokens` keys survive


def test_push_to_loopback_hub_then_repush_updates_instead_of_duplicating(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", CANARY)
    out = make_run(tmp_path / "r", n_prompts=24)
    expected = hub.dry_run(out, tmp_path / "dry", "org/cai-data")
    with FakeHub() as server:
        first = hub.push(out, "org/cai-data", private=True, endpoint=server.url)
        repo = server.files("org/cai-data")
        assert sorted(repo) == expected
        for f in expected:  # byte-identical to the dry run
            assert repo[f] == (tmp_path / "dry" / f).read_bytes(), f
        assert server.repos["org/cai-data"]["private"] and server.repos["org/cai-data"]["type"] == "dataset"
        paths = [(r["method"], r["path"].split("/")[-2] if r["path"].count("/") > 4 else r["path"]) for r in server.requests]
        assert ("POST", "/api/repos/create") in paths and ("POST", "preupload") in paths and ("POST", "commit") in paths
        # The token travels only as the Authorization header; never in a body, a URL or a file.
        for r in server.requests:
            assert r["headers"].get("authorization") == f"Bearer {CANARY}", (r["method"], r["path"])
            assert CANARY.encode() not in r["body"] and CANARY not in r["path"] + r["query"]
        assert first["commit"] == server.commits[-1]["oid"] and first["deleted"] == []

        # Edit the constitution, regenerate, push again: the old data files go, nothing piles up.
        edited = [dict(p) for p in PRINCIPLES]
        edited[0]["revision"] = "Rewrite the response so that nothing in it could hurt anyone."
        write_constitution(tmp_path / "r" / "constitution.yaml", edited)
        run(tmp_path / "r" / "pipeline.yaml")
        second = hub.push(out, "org/cai-data", endpoint=server.url)
        repo = server.files("org/cai-data")
        assert sorted(repo) == sorted(second["files"])
        assert len([f for f in repo if f.startswith("data/train-")]) == 1
        assert second["deleted"] and all(f in first["files"] for f in second["deleted"])
        new_sha = json.loads((out / "run.json").read_text())["constitution_sha256"]
        assert new_sha.encode() in repo["README.md"]
        assert len(server.commits) == 2 and len(server.repos) == 1

        # A branch: created from main, committed there, main untouched.
        hub.push(out, "org/cai-data", revision="v2", endpoint=server.url)
        assert sorted(server.files("org/cai-data", "v2")) == sorted(second["files"])
        assert server.commits[-1]["branch"] == "v2"


def _cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "cai", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def test_cli_push_exit_codes_and_one_line_errors(tmp_path):
    out = make_run(tmp_path / "r", n_prompts=6)
    no_token = {"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}
    bad = _cli("push", str(tmp_path), "--repo-id", "org/name", "--dry-run", str(tmp_path / "d"))
    assert bad.returncode == 2 and "no run.json" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad = _cli("push", str(out), "--repo-id", "not a repo", "--dry-run", str(tmp_path / "d"))
    assert bad.returncode == 2 and "--repo-id" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    ok = _cli("push", str(out), "--repo-id", "org/name", "--dry-run", str(tmp_path / "d"))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "d" / "README.md").is_file()
    with FakeHub(fail=401) as server:
        denied = _cli("push", str(out), "--repo-id", "org/name", env={"HF_ENDPOINT": server.url, "HF_TOKEN": CANARY})
    assert denied.returncode == 1 and "push failed" in denied.stderr and "Traceback" not in denied.stderr
    assert len(denied.stderr.strip().splitlines()) == 1 and CANARY not in denied.stderr
    missing = _cli("push", str(out), "--repo-id", "org/name", env={**no_token, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert missing.returncode == 1 and "token" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    with FakeHub() as server:
        pushed = _cli("push", str(out), "--repo-id", "org/name", env={"HF_ENDPOINT": server.url, "HF_TOKEN": CANARY})
        assert pushed.returncode == 0, pushed.stderr
        assert "README.md" in server.files("org/name")
    unreachable = _cli("push", str(out), "--repo-id", "org/name", env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": CANARY})
    assert unreachable.returncode == 1 and "push failed" in unreachable.stderr


@pytest.mark.parametrize("repo_id", ["name-only", "a/b/c", "org/-bad", "org/na--me", ""])
def test_repo_id_checks(repo_id):
    with pytest.raises(hub.InputError):
        hub.check_repo_id(repo_id)
