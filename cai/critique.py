"""SL-CAI: respond, then (critique -> revise) for each round, over a whole batch at once.

The conversation continues as in the Constitutional AI paper: user prompt,
answer, critique request, critique, revision request, revision, and the next
round's critique request addresses the latest revision. Few-shot examples from
the constitution come first, as earlier turns of the same chat.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable, Sequence

from cai.backends import Conversation, Message
from cai.constitution import Constitution, Principle
from cai import quality

# (stage name, conversations, example ids) -> completions; the engine supplies caching,
# per-call seeds and progress.
Call = Callable[[str, list[Conversation], list[str]], list[str]]


def _uniform(prefix: "hashlib._Hash", last: str) -> float:
    h = prefix.copy()
    h.update(last.encode())
    return (int.from_bytes(h.digest()[:8], "big") + 0.5) / 2**64


def sample_principle(principles: Sequence[Principle], example_id: str, round_no: int,
                     seed: int = 0) -> Principle:
    """Weighted draw that is deterministic per (example, round) and stable under edits.

    Each principle gets its own exponential race time -ln(U)/weight from a hash of
    (seed, example, round, principle id); the earliest wins, which picks principle
    i with probability w_i / sum(w). Because a principle's time never depends on the
    others, adding, removing or reweighting one principle changes only the draws
    that it wins or used to win.
    """
    prefix = hashlib.sha256(f"{seed}\x1f{example_id}\x1f{round_no}\x1f".encode())
    return min(principles, key=lambda p: -math.log(_uniform(prefix, p.id)) / p.weight)


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

    def run(self, records: list[dict], call: Call) -> None:
        """Fill each record's initial answer, rounds, final revision and flags, in place."""
        ids = [r["id"] for r in records]
        histories: list[list[Message]] = [[{"role": "user", "content": r["prompt"]}] for r in records]
        answers = call("respond", [self.system + h for h in histories], ids)
        for rec, hist, answer in zip(records, histories, answers):
            rec["initial"] = answer
            hist.append({"role": "assistant", "content": answer})
        latest = list(answers)
        for r in range(1, self.rounds + 1):
            chosen = [sample_principle(self.principles, i, r, self.seed) for i in ids]
            prefixes = [self.system + few_shot_turns(self.constitution, p, self.few_shot) for p in chosen]
            asks = [h + [{"role": "user", "content": p.critique}] for h, p in zip(histories, chosen)]
            critiques = call(f"critique:{r}", [pre + a for pre, a in zip(prefixes, asks)], ids)
            revise_asks = [a + [{"role": "assistant", "content": c}, {"role": "user", "content": p.revision}]
                           for a, c, p in zip(asks, critiques, chosen)]
            raws = call(f"revise:{r}", [pre + a for pre, a in zip(prefixes, revise_asks)], ids)
            for k, (rec, p, crit, raw) in enumerate(zip(records, chosen, critiques, raws)):
                revision, stripped = quality.strip_meta(raw)
                rec["rounds"].append({
                    "round": r,
                    "principle_id": p.id,
                    "critique_request": p.critique,
                    "critique": crit,
                    "revision_request": p.revision,
                    "revision": revision,
                    "revision_raw": raw,
                    "meta_stripped": stripped,
                    "critique_problem": quality.critique_problem(crit, latest[k]),
                    "revision_problem": quality.revision_problem(raw, revision, crit),
                })
                histories[k] = revise_asks[k] + [{"role": "assistant", "content": revision}]
                latest[k] = revision
        for rec, final in zip(records, latest):
            rec["final"] = final
            rec["flags"] = quality.record_flags(rec)
