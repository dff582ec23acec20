"""SL-CAI: respond, then (critique -> revise) for each round, over a whole batch at once.

The conversation continues as in the Constitutional AI paper: user prompt,
answer, critique request, critique, revision request, revision, and the next
round's critique request addresses the latest revision. Few-shot examples from
the constitution come first, as earlier turns of the same chat.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

from cai import quality
from cai.backends import CallFailed, Conversation, Message
from cai.constitution import Constitution, Principle
from cai.stage import Calls


def _uniform(prefix: "hashlib._Hash", last: str) -> float:
    h = prefix.copy()
    h.update(last.encode())
    return (int.from_bytes(h.digest()[:8], "big") + 0.5) / 2**64


def rank_principles(principles: Sequence[Principle], example_id: str, round_no: int | str,
                    seed: int = 0) -> list[Principle]:
    """Weighted order that is deterministic per (example, round) and stable under edits.

    Each principle gets its own exponential race time -ln(U)/weight from a hash of
    (seed, example, round, principle id); the earliest wins, which picks principle
    i with probability w_i / sum(w), and the first k are a weighted draw without
    replacement. Because a principle's time never depends on the others, adding,
    removing or reweighting one principle changes only the draws that it wins or
    used to win.
    """
    prefix = hashlib.sha256(f"{seed}\x1f{example_id}\x1f{round_no}\x1f".encode())
    return sorted(principles, key=lambda p: -math.log(_uniform(prefix, p.id)) / p.weight)


def sample_principle(principles: Sequence[Principle], example_id: str, round_no: int,
                     seed: int = 0) -> Principle:
    return rank_principles(principles, example_id, round_no, seed)[0]


def few_shot_turns(constitution: Constitution, principle: Principle, limit: int | None) -> list[Message]:
    turns: list[Message] = []
    for shot in constitution.few_shot[:limit]:
        # An example illustrates its own principle's requests; without one it borrows today's.
        p = constitution.principle(shot.principle) if shot.principle else principle
        turns += [
            {"role": "user", "content": shot.prompt},
            {"role": "assistant", "content": shot.response},
            {"role": "user", "content": p.critique},
            {"role": "assistant", "content": shot.critique},
            {"role": "user", "content": p.revision},
            {"role": "assistant", "content": shot.revision},
        ]
    return turns


class SLCAI:
    def __init__(self, constitution: Constitution, rounds: int, seed: int = 0,
                 few_shot: int | None = None, system_prompt: str | None = None):
        self.constitution = constitution
        self.principles = constitution.critique_principles
        if not self.principles:
            raise ValueError("the constitution has no principle with critique and revision requests")
        self.rounds = rounds
        self.seed = seed
        self.few_shot = few_shot
        self.system: list[Message] = [{"role": "system", "content": system_prompt}] if system_prompt else []

    def stages(self) -> list[str]:
        names = ["respond"]
        for r in range(1, self.rounds + 1):
            names += [f"critique:{r}", f"revise:{r}"]
        return names

    def run(self, records: list[dict], calls: Calls) -> None:
        """Fill each record's initial answer, rounds, final revision and flags, in place.

        A record whose call failed gets `failed` (stage, error) and takes no further stage.
        """
        live = [{"rec": r, "hist": [{"role": "user", "content": r["prompt"]}]} for r in records]

        def ask(stage: str, states: list[dict], conversations: list[Conversation]) -> list[tuple[dict, str]]:
            outputs = calls.chat(stage, conversations, [st["rec"]["id"] for st in states])
            done = []
            for st, out in zip(states, outputs):
                if isinstance(out, CallFailed):
                    st["rec"]["failed"] = {"stage": stage, "error": str(out)}
                else:
                    done.append((st, out))
            return done

        answered = ask("respond", live, [self.system + st["hist"] for st in live])
        for st, answer in answered:
            st["rec"]["initial"] = st["latest"] = answer
            st["hist"].append({"role": "assistant", "content": answer})
        live = [st for st, _ in answered if not st["rec"].get("kept")]
        for st, _ in answered:
            if st["rec"].get("kept"):  # helpfulness data: the answer as it is
                st["rec"]["final"] = st["latest"]
                st["rec"]["flags"] = quality.record_flags(st["rec"])
        for r in range(1, self.rounds + 1):
            for st in live:
                st["principle"] = p = sample_principle(self.principles, st["rec"]["id"], r, self.seed)
                st["prefix"] = self.system + few_shot_turns(self.constitution, p, self.few_shot)
                st["ask"] = st["hist"] + [{"role": "user", "content": p.critique}]
            criticised = ask(f"critique:{r}", live, [st["prefix"] + st["ask"] for st in live])
            for st, crit in criticised:
                st["critique"] = crit
                st["ask"] = st["ask"] + [{"role": "assistant", "content": crit},
                                         {"role": "user", "content": st["principle"].revision}]
            live = [st for st, _ in criticised]
            revised = ask(f"revise:{r}", live, [st["prefix"] + st["ask"] for st in live])
            for st, raw in revised:
                p, crit = st["principle"], st["critique"]
                revision, stripped = quality.strip_meta(raw)
                st["rec"]["rounds"].append({
                    "round": r,
                    "principle_id": p.id,
                    "critique_request": p.critique,
                    "critique": crit,
                    "revision_request": p.revision,
                    "revision": revision,
                    "revision_raw": raw,
                    "meta_stripped": stripped,
                    "critique_problem": quality.critique_problem(crit, st["latest"]),
                    "revision_problem": quality.revision_problem(raw, revision, crit),
                })
                st["hist"] = st["ask"] + [{"role": "assistant", "content": revision}]
                st["latest"] = revision
            live = [st for st, _ in revised]
        for st in live:
            st["rec"]["final"] = st["latest"]
            st["rec"]["flags"] = quality.record_flags(st["rec"])
