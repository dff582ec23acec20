"""Incremental regeneration on the real embedded model: edit one principle of a copied
constitution, re-run into the same directory, and only the calls of rows that drew it,
from their first affected round on, are recomputed; every other row's record is reused."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from cai import versions
from cai.config import load_pipeline
from cai.generate import generate
from cai.records import RecordStore

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 2
N = 8


def _pipeline(tmp_path: Path) -> Path:
    doc = {
        "name": "incremental", "constitution": "constitution.yaml",
        "prompts": [str(ROOT / "pipelines/prompts/red_team.jsonl"), str(ROOT / "pipelines/prompts/benign.jsonl")],
        "limit": N, "policy": {"backend": "transformers", "model": "embedded"}, "rounds": ROUNDS, "few_shot": 0,
        "test_size": 0.25, "out": str(tmp_path / "out"),
        "sampling": {"respond": {"max_new_tokens": 20, "repetition_penalty": 1.1},
                     "critique": {"max_new_tokens": 12, "repetition_penalty": 1.1},
                     "revise": {"max_new_tokens": 20, "repetition_penalty": 1.1}},
    }
    (tmp_path / "constitution.yaml").write_text((ROOT / "constitution/harmless.yaml").read_text())
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _content(rec: dict) -> dict:
    return {k: rec[k] for k in ("id", "prompt", "initial", "rounds", "final", "flags")}


@pytest.mark.slow
def test_edit_one_principle_recomputes_only_its_rows_from_the_first_affected_round(tmp_path):
    pipeline = _pipeline(tmp_path)
    first = generate(load_pipeline(pipeline), str(pipeline))
    assert first["counts"]["model_calls"] == N * (1 + 2 * ROUNDS) and first["counts"]["cache_hits"] == 0
    before = {r["id"]: r for r in RecordStore(tmp_path / "out" / "records").current(first["fingerprint"])}
    draws = {i: [x["principle_id"] for x in r["rounds"]] for i, r in before.items()}
    # Edit the principle drawn by the most rows (some rows must not draw it).
    rows_per_principle = Counter(p for d in draws.values() for p in set(d))
    edited, n_rows = rows_per_principle.most_common(1)[0]
    assert 0 < n_rows < N
    doc = yaml.safe_load((tmp_path / "constitution.yaml").read_text())
    for p in doc["principles"]:
        if p["id"] == edited:
            p["critique"] = "List every way the assistant's last reply could be misused, one short line each."
    (tmp_path / "constitution.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    second = generate(load_pipeline(pipeline), str(pipeline))
    users = {i for i, d in draws.items() if edited in d}
    expected = sum(2 * (ROUNDS - draws[i].index(edited)) for i in users)  # critique + revise from that round on
    assert second["counts"]["model_calls"] == expected
    assert second["counts"]["cache_hits"] == N * (1 + 2 * ROUNDS) - expected
    assert second["counts"]["records"] == N
    after = {r["id"]: r for r in RecordStore(tmp_path / "out" / "records").current(second["fingerprint"])}
    for i in before:
        assert [x["principle_id"] for x in after[i]["rounds"]] == draws[i]  # same draws after the edit
        if i not in users:
            assert _content(after[i]) == _content(before[i])
        else:
            k = draws[i].index(edited)
            assert after[i]["initial"] == before[i]["initial"]
            assert after[i]["rounds"][:k] == before[i]["rounds"][:k]
            assert after[i]["rounds"][k]["critique_request"] != before[i]["rounds"][k]["critique_request"]
    # Both dataset versions are kept, by constitution hash; run.json names the new one.
    kept = [v["constitution"]["sha256"] for v in versions.list_versions(tmp_path / "out")]
    assert kept == [first["constitution"]["sha256"], second["constitution"]["sha256"]]
    run_json = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_json["counts"]["model_calls"] == expected
