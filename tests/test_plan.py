"""`cai generate --plan` predicts the calls a run then makes, and writes nothing."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import yaml

from cai.backends.scripted import ScriptedBackend
from cai.config import load_pipeline
from cai.generate import generate
from cai.plan import plan
from helpers import PRINCIPLES, FakeJudge, write_constitution, write_pipeline


def whole_conversation(conv):
    """Output depends on every message, as a real model's does."""
    digest = hashlib.sha256(json.dumps(conv).encode()).hexdigest()
    return " ".join(digest[i:i + 6] for i in range(0, 48, 6))


class Policy(ScriptedBackend):
    def __init__(self):
        super().__init__("echo", script=whole_conversation)

    def chat(self, conversations, sampling, progress=None):
        # Sampled answers depend on their seed too, as a sampling model's do.
        return [whole_conversation(c + ([] if s.greedy else [{"seed": s.seed}])) for c, s in zip(conversations, sampling)]


def snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_plan_agrees_with_the_run_after_each_kind_of_edit(tmp_path):
    path = write_pipeline(tmp_path, n_prompts=24, rounds=2)
    config = load_pipeline(path, out=str(tmp_path / "run"))
    assert plan(config)["model_calls"] == 24 * 5
    generate(config, backend=Policy())
    assert plan(config)["model_calls"] == 0 and plan(config)["records_reused"] == 24
    constitution = tmp_path / "constitution.yaml"
    edits = [
        [{**p, "critique": p["critique"] + " Be brief."} if p["id"] == "honesty" else p for p in PRINCIPLES],
        PRINCIPLES + [{"id": "new", "critique": "Point out anything new.", "revision": "Revise it anew.",
                       "comparison": "Which is newer?"}],
        [{**p, "weight": 4.0} if p["id"] == "privacy" else p for p in PRINCIPLES],
        [p for p in PRINCIPLES if p["id"] != "kindness"],
    ]
    for principles in edits:
        write_constitution(constitution, principles)
        before = snapshot(tmp_path / "run")
        planned = plan(config)
        assert snapshot(tmp_path / "run") == before  # --plan writes nothing, the cache included
        summary = generate(config, backend=Policy())
        c = summary["counts"]
        assert 0 < planned["model_calls"] == c["model_calls"] < 24 * 5
        assert planned["cache_hits"] == c["cache_hits"]
        assert planned["calls_by_stage"].get("respond", 0) == 0  # no principle reaches the first answer
        records = [json.loads(l) for f in sorted((tmp_path / "run" / "records").glob("*.jsonl")) for l in f.open()]
        current = [r for r in records if r["constitution_sha256"] == summary["constitution_sha256"]]
        assert len(current) == 24


def test_plan_counts_the_judges_calls(tmp_path):
    path = write_pipeline(tmp_path, n_prompts=10, rounds=1, judge={"model": "judge"},
                          feedback={"enabled": True, "pairs": "both", "principles": 2})
    config = load_pipeline(path, out=str(tmp_path / "run"))
    judge = FakeJudge(lambda a, b: (math.log(0.7), math.log(0.3)))
    planned = plan(config)
    summary = generate(config, backend=Policy(), judge=judge)
    assert planned["judge_calls"] == summary["counts"]["judge_calls"] == judge.scored > 0
    assert planned["model_calls"] == summary["counts"]["model_calls"]
    doc = yaml.safe_load(path.read_text())
    doc["feedback"]["principles"] = 3  # one more principle per comparison: only new judge calls
    path.write_text(yaml.safe_dump(doc))
    config = load_pipeline(path, out=str(tmp_path / "run"))
    planned = plan(config)
    judge.scored = 0
    summary = generate(config, backend=Policy(), judge=judge)
    assert planned["model_calls"] == planned["judge_calls"] == summary["counts"]["model_calls"] == judge.scored > 0


def test_cli_plan_prints_json_and_creates_nothing(tmp_path):
    path = write_pipeline(tmp_path, n_prompts=4, rounds=1)
    out = tmp_path / "fresh"
    res = subprocess.run([sys.executable, "-m", "cai", "generate", str(path), "--out", str(out), "--plan"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["model_calls"] == 4 * 3 and "4 rebuilt" in res.stderr
    assert not out.exists()
