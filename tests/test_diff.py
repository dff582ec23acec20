"""Dataset versions kept by constitution hash, and `cai diff` between two of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import datasets

from cai import versions
from cai.diff import compare
from cai.records import RecordStore
from helpers import PRINCIPLES, write_constitution, write_pipeline
from helpers import run


def test_edit_keeps_the_previous_version_and_diff_reports_what_changed(tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=40)
    first = run(pipeline)
    old_sha = first["constitution"]["sha256"]
    old_rows = {r["id"]: r for s in datasets.load_dataset(str(tmp_path / "out" / "dataset")).values() for r in s}
    edited = [dict(p) for p in PRINCIPLES]
    edited[3]["revision"] = "Rewrite the response so it reveals nothing about any person."
    write_constitution(tmp_path / "constitution.yaml", edited)
    second = run(pipeline)
    new_sha = second["constitution"]["sha256"]
    kept = versions.list_versions(tmp_path / "out")
    assert [v["constitution"]["sha256"] for v in kept] == [old_sha, new_sha]
    # The old version is still loadable, as it was.
    old_dir = tmp_path / "out" / "versions" / old_sha[:12]
    again = {r["id"]: r for s in datasets.load_dataset(str(old_dir / "dataset")).values() for r in s}
    assert again == old_rows
    assert json.loads((old_dir / "version.json").read_text())["constitution"]["sha256"] == old_sha

    report = compare(tmp_path / "out")
    assert report["before"]["sha256"] == old_sha and report["after"]["sha256"] == new_sha
    assert report["principles"] == {"added": [], "removed": [], "edited": {"privacy": ["revision"]}}
    recs = {r["id"]: r for r in RecordStore(tmp_path / "out" / "records").current(second["fingerprint"])}
    users = {i for i, r in recs.items() if "privacy" in [x["principle_id"] for x in r["rounds"]] and not r["flags"]}
    # Only rows that drew the edited principle can change; with the echo model a row's `chosen`
    # shows the edit when its last round drew it (an earlier round's text is not echoed on).
    last = {i for i in users if recs[i]["rounds"][-1]["principle_id"] == "privacy"}
    assert last & set(old_rows) <= set(report["rows"]["changed_ids"]) <= users
    assert report["rows"]["changed"] > 0
    assert report["rows"]["changed"] + report["rows"]["unchanged"] == len(set(old_rows) & {i for i, r in recs.items() if not r["flags"]})
    assert report["principle_usage"]["privacy"][0] == report["principle_usage"]["privacy"][1] > 0
    assert report["samples"] and all("privacy" in s["principle_ids_after"] for s in report["samples"])


def test_diff_cli_text_and_errors(tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=12)
    run(pipeline)
    env = {**os.environ}
    one = subprocess.run([sys.executable, "-m", "cai", "diff", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert one.returncode == 2 and "needs two" in one.stderr
    edited = [dict(p) for p in PRINCIPLES] + [{"id": "brevity", "critique": "Is the response too long?",
                                                "revision": "Rewrite it shorter.", "weight": 3.0}]
    write_constitution(tmp_path / "constitution.yaml", edited)
    run(pipeline)
    text = subprocess.run([sys.executable, "-m", "cai", "diff", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert text.returncode == 0, text.stderr
    assert "added brevity" in text.stdout and "rows:" in text.stdout and "principle usage" in text.stdout
    bad = subprocess.run([sys.executable, "-m", "cai", "diff", str(tmp_path / "out"), "--from", "zzz"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--from" in bad.stderr
    as_json = json.loads(subprocess.run([sys.executable, "-m", "cai", "diff", str(tmp_path / "out"), "--json"],
                                        capture_output=True, text=True, env=env).stdout)
    assert as_json["principles"]["added"] == ["brevity"]
    assert as_json["principle_usage"]["brevity"][0] == 0 < as_json["principle_usage"]["brevity"][1]


def test_reverting_an_edit_reuses_its_version_and_diffs_against_the_edit(tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=12)
    a = run(pipeline)["constitution"]["sha256"]
    edited = [dict(p) for p in PRINCIPLES]
    edited[1]["weight"] = 4.0
    write_constitution(tmp_path / "constitution.yaml", edited)
    b = run(pipeline)["constitution"]["sha256"]
    write_constitution(tmp_path / "constitution.yaml", PRINCIPLES)
    again = run(pipeline)
    assert again["constitution"]["sha256"] == a and again["counts"]["model_calls"] == 0
    assert [v["constitution"]["sha256"] for v in versions.list_versions(tmp_path / "out")] == [b, a]
    report = compare(tmp_path / "out")
    assert (report["before"]["sha256"], report["after"]["sha256"]) == (b, a)
    assert report["principles"]["edited"] == {"honesty": ["weight"]}
    assert not list((tmp_path / "out" / "versions").glob(".*"))
