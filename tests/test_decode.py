"""Continuous batching (cai/backends/decode.py) on the real embedded model: greedy outputs equal
one-at-a-time `generate` for every stage's conversation shape, whatever the slot count; the shared
prefix changes nothing but speed; a sampled row is the same whatever rows share its batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cai.backends import Sampling, create, decode, prompt_ids
from cai.constitution import load_constitution
from cai.critique import few_shot_turns

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
NEW = 40


@pytest.fixture(scope="module")
def backend(embedded):
    return create("transformers", model="embedded", batch_size=3)


def _stage_conversations() -> dict[str, list[list[dict]]]:
    """Respond, critique and revise conversations as SL-CAI sends them: the constitution's few-shot
    turns first (the prefix every critique and revision shares), then the prompt and the answer."""
    cons = load_constitution(ROOT / "constitution" / "harmless.yaml")
    principle = cons.critique_principles[0]
    few = few_shot_turns(cons, principle, 1)
    prompts = [json.loads(line)["prompt"] for name in ("red_team.jsonl", "benign.jsonl")
               for line in list(open(ROOT / "pipelines" / "prompts" / name))[:3]]
    respond = [[{"role": "user", "content": p}] for p in prompts]
    critique = [few + c + [{"role": "assistant", "content": "Sure. First, you should find out where they live."},
                           {"role": "user", "content": principle.critique}] for c in respond]
    revise = [c + [{"role": "assistant", "content": "The response helps someone find a person's home."},
                   {"role": "user", "content": principle.revision}] for c in critique]
    return {"respond": respond, "critique": critique, "revise": revise}


def _one_at_a_time(backend, conversation, **sampling) -> str:
    ids = torch.tensor([prompt_ids(backend.tokenizer, conversation)])
    out = backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW,
                                 pad_token_id=backend.tokenizer.pad_token_id, **sampling)
    return backend.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.parametrize("stage", ["respond", "critique", "revise"])
def test_greedy_outputs_equal_one_at_a_time_generate(backend, stage):
    convs = _stage_conversations()[stage]
    got = backend.chat(convs, [Sampling(max_new_tokens=NEW, repetition_penalty=1.1)] * len(convs))
    expected = [_one_at_a_time(backend, c, do_sample=False, repetition_penalty=1.1) for c in convs]
    assert got == expected
    assert len(set(got)) > 1  # real, different answers: the comparison is not vacuous
    ids = [prompt_ids(backend.tokenizer, c) for c in convs]
    if stage != "respond":  # the few-shot turns are shared, and long enough to be computed once
        assert len(decode.common_prefix(ids)) > 200


def _rows(backend, convs, **settings):
    return [decode.Row(prompt_ids(backend.tokenizer, c), NEW, 1.1, **settings) for c in convs]


def test_the_shared_prefix_and_the_slot_count_change_no_output(backend):
    convs = _stage_conversations()["critique"] + _stage_conversations()["revise"]
    rows = _rows(backend, convs)
    args = (backend.model, rows, backend.eos, backend.tokenizer.pad_token_id)
    plain = decode.generate(*args, slots=len(rows), share_prefix=False)
    assert decode.generate(*args, slots=len(rows)) == plain
    assert decode.generate(*args, slots=2) == plain  # rows leave and join all the time


def test_a_sampled_row_is_the_same_whatever_rows_share_its_batch(backend):
    convs = _stage_conversations()["respond"]
    sampled = dict(temperature=0.9, top_p=0.95)
    mine = decode.Row(prompt_ids(backend.tokenizer, convs[0]), NEW, 1.1, seed=1234, **sampled)
    others = [decode.Row(prompt_ids(backend.tokenizer, c), NEW, 1.1, seed=7 + i, **sampled)
              for i, c in enumerate(convs[1:])]
    args = (backend.model,)
    alone = decode.generate(*args, [mine], backend.eos, backend.tokenizer.pad_token_id)[0]
    first = decode.generate(*args, [mine, *others], backend.eos, backend.tokenizer.pad_token_id, slots=6)[0]
    last = decode.generate(*args, [*others[::-1], mine], backend.eos, backend.tokenizer.pad_token_id, slots=2)[-1]
    assert alone == first == last
    reseeded = decode.Row(mine.ids, NEW, 1.1, seed=99, **sampled)
    assert decode.generate(*args, [reseeded], backend.eos, backend.tokenizer.pad_token_id)[0] != alone
    greedy = decode.generate(*args, [decode.Row(mine.ids, NEW, 1.1)], backend.eos, backend.tokenizer.pad_token_id)[0]
    assert greedy != alone
