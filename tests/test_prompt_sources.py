"""Per-source settings: `mode: keep` keeps benign answers as helpfulness SFT data (not revised under
harmlessness principles), and `holdout` keeps a share of every source out of generation for `cai eval`."""

from __future__ import annotations

import json

import datasets
import yaml
from helpers import FakeJudge, records_by_id, write_pipeline, write_prompts

from cai import shipped
from cai.backends.scripted import ScriptedBackend
from cai.config import PromptSource, load_pipeline
from cai.prompts import is_held_out
from cai.generate import generate
from cai.prompts import load_prompts


class Recording(ScriptedBackend):
    def __init__(self):
        super().__init__("echo")
        self.asked = []

    def chat(self, conversations, sampling, progress=None):
        self.asked += [list(c) for c in conversations]
        return super().chat(conversations, sampling, progress)


def _two_sources(tmp_path, mode="keep", **fields):
    write_prompts(tmp_path / "red.jsonl", 4, prefix="rt")
    write_prompts(tmp_path / "benign.jsonl", 4, prefix="bn")
    pipeline = write_pipeline(tmp_path, **fields)
    doc = yaml.safe_load(pipeline.read_text())
    doc["prompts"] = ["red.jsonl", {"path": "benign.jsonl", "mode": mode}]
    pipeline.write_text(yaml.safe_dump(doc))
    return pipeline


def test_kept_prompts_are_answered_once_and_become_sft_rows_not_pairs(tmp_path):
    pipeline = _two_sources(tmp_path, feedback={"enabled": True})
    policy, judge = Recording(), FakeJudge(lambda a, b: (-0.1, -2.0) if len(a) > len(b) else (-2.0, -0.1))
    generate(load_pipeline(pipeline), str(pipeline), backend=policy, judge=judge)
    asked_about = {c[0]["content"] if c[0]["role"] == "user" else c[1]["content"] for c in policy.asked}
    by_first_turn: dict[str, int] = {}
    for c in policy.asked:
        first = next(m["content"] for m in c if m["role"] == "user")
        by_first_turn[first] = by_first_turn.get(first, 0) + 1
    # rounds: 2 -> a revised prompt is asked 1 + 2 x 2 times; a kept one once.
    assert {p: n for p, n in by_first_turn.items() if "from bn" in p} == {
        f"Question number {i} from bn?": 1 for i in range(4)}
    assert all(n == 5 for p, n in by_first_turn.items() if "from rt" in p) and len(asked_about) == 8
    records = {i: recs[-1] for i, recs in records_by_id(tmp_path / "out").items()}
    for i in range(4):
        kept = records[f"bn-{i:05d}"]
        assert kept["kept"] and kept["rounds"] == [] and kept["final"] == kept["initial"]
        assert "feedback" not in kept  # not judged against harmlessness principles
        assert len(records[f"rt-{i:05d}"]["rounds"]) == 2
    sft = datasets.load_dataset(str(tmp_path / "out" / "sft"))
    sft_rows = {i: m for split in sft.values() for i, m in zip(split["id"], split["messages"])}
    assert sft_rows["bn-00000"][-1]["content"] == records["bn-00000"]["initial"]
    pairs = datasets.load_dataset(str(tmp_path / "out" / "dataset"))
    assert pairs and not any(i.startswith("bn-") for split in pairs.values() for i in split["id"])


def test_changing_a_sources_mode_remakes_only_its_records(tmp_path):
    pipeline = _two_sources(tmp_path, mode="revise")
    generate(load_pipeline(pipeline), str(pipeline), backend=ScriptedBackend("echo"))
    before = {i: recs[-1] for i, recs in records_by_id(tmp_path / "out").items()}
    assert all(len(r["rounds"]) == 2 for r in before.values())
    doc = yaml.safe_load(pipeline.read_text())
    doc["prompts"][1]["mode"] = "keep"
    pipeline.write_text(yaml.safe_dump(doc))
    summary = generate(load_pipeline(pipeline), str(pipeline), backend=ScriptedBackend("echo"))
    after = {i: recs[-1] for i, recs in records_by_id(tmp_path / "out").items()}
    assert summary["counts"]["records"] == 8
    assert {i for i in after if after[i] != before[i]} == {f"bn-{i:05d}" for i in range(4)}
    assert all(after[f"bn-{i:05d}"]["kept"] for i in range(4))


def test_the_shipped_pipeline_keeps_benign_answers_and_holds_out_prompts_for_eval():
    config = load_pipeline(shipped.default_pipeline())
    modes = {s.path.rsplit("/", 1)[-1]: s.mode for s in config.prompts}
    assert modes == {"red_team.jsonl": "revise", "benign.jsonl": "keep"}
    assert config.holdout == 0.3


def test_held_out_prompts_never_reach_generation_and_the_split_is_not_the_test_split(tmp_path):
    write_prompts(tmp_path / "p.jsonl", 200)
    source = [PromptSource(path=str(tmp_path / "p.jsonl"))]
    every = {e["id"] for e in load_prompts(source)}
    generated = {e["id"] for e in load_prompts(source, holdout=0.3)}
    kept_back = {e["id"] for e in load_prompts(source, holdout=0.3, held_out=True)}
    assert generated | kept_back == every and not generated & kept_back
    assert 40 <= len(kept_back) <= 80  # about 30 % of 200
    from cai.dataset import split_of

    # The dataset's test split still draws from what is generated (its own hash).
    assert sum(split_of(i, 0.1) == "test" for i in generated) > 5
    pipeline = write_pipeline(tmp_path / "run", holdout=0.3)
    doc = yaml.safe_load(pipeline.read_text())
    doc["prompts"] = [str(tmp_path / "p.jsonl")]
    pipeline.write_text(yaml.safe_dump(doc))
    generate(load_pipeline(pipeline), str(pipeline), backend=ScriptedBackend("echo"))
    run = json.loads((tmp_path / "run" / "out" / "run.json").read_text())
    assert set(records_by_id(tmp_path / "run" / "out")) == generated
    assert run["counts"]["records"] == len(generated)
    assert all(is_held_out(i, 0.3) for i in kept_back)
