"""The conversations SL-CAI sends, as the model receives them: few-shot turns first, then the prompt, the
answer and each round's critique and revision requests, each round continuing the last."""

from __future__ import annotations

import copy
import json

import pytest

from cai.backends.scripted import ScriptedBackend
from cai.config import load_pipeline
from cai.generate import generate
from helpers import PRINCIPLES, write_constitution, write_pipeline

SHOTS = [  # the first names its principle, the second borrows the one sampled for the round
    {"prompt": "How do I get back at my noisy neighbour?", "response": "Slash their tyres tonight.",
     "critique": "Damaging their car is harmful and illegal.",
     "revision": "Talk to them calmly first, then to your landlord.", "principle": "honesty"},
    {"prompt": "Is the earth flat?", "response": "Yes, it is flat.", "critique": "That is untrue.",
     "revision": "No: the earth is round."},
]
BY_ID = {p["id"]: p for p in PRINCIPLES}


class Recorder(ScriptedBackend):
    """The scripted backend, keeping every `chat` call's conversations."""

    def __init__(self):
        super().__init__("echo")
        self.calls: list[list] = []

    def chat(self, conversations, sampling, progress=None):
        self.calls.append(copy.deepcopy(list(conversations)))
        return super().chat(conversations, sampling, progress)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def shot_turns(shots, principle):
    turns = []
    for s in shots:
        p = BY_ID[s.get("principle", principle["id"])]
        turns += [user(s["prompt"]), assistant(s["response"]), user(p["critique"]), assistant(s["critique"]),
                  user(p["revision"]), assistant(s["revision"])]
    return turns


@pytest.mark.parametrize("few_shot, system", [(None, None), (1, "You are a careful assistant."), (0, None)])
def test_slcai_conversations(tmp_path, few_shot, system):
    write_constitution(tmp_path / "constitution.yaml", few_shot=SHOTS)
    config = load_pipeline(write_pipeline(tmp_path, n_prompts=4, rounds=2, few_shot=few_shot, system_prompt=system))
    recorder = Recorder()
    generate(config, backend=recorder)
    records = [json.loads(line) for f in sorted((tmp_path / "out" / "records").glob("shard-*")) for line in open(f)]
    used = {r["principle_id"] for rec in records for r in rec["rounds"]}
    assert len(records) == 4 and len(used) > 1 and used - {"honesty"}  # the borrowed requests vary
    sys_turns = [{"role": "system", "content": system}] if system else []
    shots = SHOTS[:few_shot]

    # One call per stage: respond, then critique and revise per round, in that order.
    expected = [[sys_turns + [user(rec["prompt"])] for rec in records]]
    hist = [[user(rec["prompt"]), assistant(rec["initial"])] for rec in records]
    for k in range(2):
        critiques, revisions = [], []
        for i, rec in enumerate(records):
            rnd = rec["rounds"][k]
            p = BY_ID[rnd["principle_id"]]
            prefix = sys_turns + shot_turns(shots, p)
            # The critique follows the latest answer; the revision request follows the critique.
            critiques.append(prefix + hist[i] + [user(p["critique"])])
            revisions.append(critiques[-1] + [assistant(rnd["critique"]), user(p["revision"])])
            # The next round continues this one, its revision being the latest answer.
            hist[i] = revisions[-1][len(prefix):] + [assistant(rnd["revision"])]
        expected += [critiques, revisions]
    assert recorder.calls == expected

    # Spelled out for the first record: few-shot turns (limited by few_shot), then its own turns.
    first, r1, r2 = records[0], *records[0]["rounds"]
    crit2 = recorder.calls[3][0]
    assert len(crit2) == len(sys_turns) + 6 * len(shots) + 2 + 4 + 1
    own = crit2[len(sys_turns) + 6 * len(shots):]
    assert [m["content"] for m in own] == [
        first["prompt"], first["initial"], BY_ID[r1["principle_id"]]["critique"], r1["critique"],
        BY_ID[r1["principle_id"]]["revision"], r1["revision"], BY_ID[r2["principle_id"]]["critique"]]
