"""Reasoning models: their thinking is kept in the records and never reaches critiques, revisions,
the judge's next turn or the dataset, whether it comes inline (<think>) or as reasoning_content."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from cai.backends.scripted import ScriptedBackend, echo_script
from cai.reasoning import split
from helpers import KEY, Stub, records_by_id, run, write_pipeline

PLAN = "SECRET-PLAN"  # a word only the thinking contains


@pytest.mark.parametrize("text, answer, thinking", [
    ("plain answer", "plain answer", None),
    ("<think>weigh it</think>\n\nthe answer", "the answer", "weigh it"),
    ("weigh it</think>the answer", "the answer", "weigh it"),  # the chat template opened the block
    ("<think>weigh it, then run out of tokens", "", "weigh it, then run out of tokens"),
    ("<think>\n\n</think>\n\nthe answer", "the answer", None),  # thinking switched off
    ("<thinking>a</thinking>x<think>b</think>y", "xy", "a\n\nb"),
])
def test_thinking_is_split_from_the_answer_in_every_form(text, answer, thinking):
    assert split(text) == (answer, thinking)


class Thinker(ScriptedBackend):
    """Thinks before each answer, inline (form='open') or with only the closing tag (form='close')."""

    def __init__(self, form: str):
        super().__init__("thinker")
        self.form, self.seen = form, []

    def chat(self, conversations, sampling, progress=None):
        self.seen += conversations
        head = "<think>" if self.form == "open" else ""
        return [f"{head}{PLAN} for turn {len(c)}</think>{echo_script(c)}" for c in conversations]


def _all_text(out) -> str:
    return " ".join(json.dumps(pq.read_table(f).to_pylist()) for f in out.rglob("*.parquet"))


@pytest.mark.parametrize("form", ["open", "close"])
def test_inline_thinking_is_kept_in_records_and_kept_out_of_everything_else(tmp_path, form):
    backend = Thinker(form)
    pipeline = write_pipeline(tmp_path, n_prompts=4, feedback={"enabled": True, "cot": True, "principles": 1})
    run(pipeline, backend=backend)
    recs = [r[0] for r in records_by_id(tmp_path / "out").values()]
    for rec in recs:
        steps = rec["thinking"]
        assert {"respond", "critique:1", "revise:1", "critique:2", "revise:2"} <= set(steps)
        assert any(k.startswith("judge-cot/revision_vs_initial/") for k in steps)
        assert all(v.startswith(PLAN) for v in steps.values())
        visible = json.dumps({k: v for k, v in rec.items() if k != "thinking"})
        assert PLAN not in visible and "think>" not in visible
    # No later turn, critique request or judge question was shown the thinking.
    assert not [m for c in backend.seen for m in c if PLAN in m["content"]]
    assert PLAN not in _all_text(tmp_path / "out") and _all_text(tmp_path / "out")


def test_reasoning_content_from_an_api_is_kept_and_kept_out(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    stub = Stub(reasoning=lambda last: f"{PLAN}: think about {last[:20]}")
    pipeline = write_pipeline(tmp_path, n_prompts=3, backend="openai", model="stub-model", base_url=stub.url)
    from cai.config import load_pipeline
    from cai.generate import generate

    generate(load_pipeline(pipeline))
    recs = [r[0] for r in records_by_id(tmp_path / "out").values()]
    assert all(rec["thinking"]["respond"].startswith(f"{PLAN}: think about") for rec in recs)
    assert all(PLAN not in json.dumps({k: v for k, v in rec.items() if k != "thinking"}) for rec in recs)
    assert not any(PLAN in b for b in stub.bodies)  # never sent back to the model
    assert PLAN not in _all_text(tmp_path / "out")
