"""RL-CAI AI feedback: a judge picks the better of two answers per principle, with soft labels.

As in the Constitutional AI paper, the judge sees the conversation, one
principle's comparison question and "Options: (A) ... (B) ...", after the
constitution's labelled comparisons (`judge_few_shot`), if any; the label is the
judge's probability of each option letter, normalized over the two. By default the
question ends with "The answer is:" and the letter is read from the reply's
first token; with `feedback.prefill` an in-process backend (transformers, vLLM)
instead continues a reply prefilled with "The answer is: (", so the next token
is the letter (an API cannot be prefilled). Every comparison is scored in both orders and
averaged (position bias is large in judges of every size), over `k`
principles drawn per comparison (the paper's principle ensemble). With
chain-of-thought the judge reasons first and the probabilities, which then
collapse toward 0/1, are clamped to 40-60 % as the paper does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Sequence

from cai.backends import Backend, CallFailed, Sampling
from cai.constitution import Constitution, Principle
from cai.critique import rank_principles
from cai.stage import ID_SEP, BackendCalls, Calls, seed_for

CHOICES = ("A", "B")  # single tokens that differ at the first token, so API backends can score them
COT_STAGE, SCORE_STAGE = "judge-cot", "judge"
COT_REQUEST = "Think step by step about which option is better before answering."
COT_FOLLOW_UP = "So, which option is better, (A) or (B)?"
ANSWER = "The answer is:"
VOTE_REQUEST = 'Reply with only {"answer": "A"} or {"answer": "B"}.'
# A vote is the JSON asked for, or a bare letter, or "The answer is (A)"; anything else is malformed.
_VOTE = re.compile(r'\{\s*"answer"\s*:\s*"\(?([AB])\)?"\s*\}|\(?([AB])\)?[.)]?|(?:the )?answer is:?\s*\(?([AB])\)?\.?',
                   re.I)
PREFILL = ANSWER + " ("  # the assistant turn the letter continues
# Bumped whenever what the judge is asked changes: part of the record fingerprint, so a
# resumed run never mixes labels from two prompts. 1 is the paper's plain form, which records
# made before the version existed were labelled with.
PROMPT_VERSION = 1


@dataclass
class Comparison:
    id: str  # unique per comparison; seeds the principle draw
    prompt: str
    a: str
    b: str


@dataclass
class Verdict:
    id: str
    p_a: float | None  # P(a is better): both orders and all principles averaged; None if unusable
    p_first: float | None  # P(a is better) with a shown as (A), over principles
    p_second: float | None  # ... with a shown as (B)
    principle_ids: list[str]
    per_principle: list[dict] = field(default_factory=list)  # {principle_id, p_first, p_second}
    position_consistent: bool = False  # both orders prefer the same answer
    malformed: int = 0  # judge outputs that gave no usable label (dropped, counted)
    option_mass: float | None = None  # mean P(A) + P(B): how much the judge answered with a letter
    reasoning: list[str] = field(default_factory=list)


def judge_prompt(prompt: str, first: str, second: str, question: str, ending: str = "") -> str:
    return (
        "Consider the following conversation between a human and an assistant:\n"
        f"Human: {prompt}\n\n{question}\n"
        f"Options:\n(A) {first}\n(B) {second}" + (f"\n\n{ending}" if ending else "")
    )


def answer_turn(prefill: bool, letter: str = "", vote: bool = False) -> dict:
    """The judge's reply: prefilled up to the letter (and closed after it when given), the letter alone,
    or (a vote) the JSON asked for."""
    if vote:
        return {"role": "assistant", "content": f'{{"answer": "{letter}"}}'}
    if not prefill:
        return {"role": "assistant", "content": letter}
    return {"role": "assistant", "content": PREFILL + (f"{letter})" if letter else "")}


def few_shot_turns(constitution: Constitution, principle: Principle, prefill: bool, vote: bool = False) -> list[dict]:
    """The constitution's labelled comparisons as earlier turns; the better answer alternates
    between (A) and (B) so the examples teach no position."""
    turns: list[dict] = []
    for n, ex in enumerate(constitution.judge_few_shot):
        question = constitution.principle(ex.principle).comparison if ex.principle else principle.comparison
        first, second, letter = (ex.better, ex.worse, "A") if n % 2 == 0 else (ex.worse, ex.better, "B")
        ending = VOTE_REQUEST if vote else "" if prefill else ANSWER
        turns += [{"role": "user", "content": judge_prompt(ex.prompt, first, second, question, ending)},
                  answer_turn(prefill, letter, vote)]
    return turns


def can_prefill(backend: str) -> bool:
    """In-process backends continue a prefilled assistant turn; an OpenAI-compatible API cannot."""
    return backend != "openai"


def prefill_for(config, spec=None) -> bool:
    """Whether a pipeline's judge (or the model `spec` judging as it would) is prefilled: asked for
    (feedback.prefill) and possible on its backend."""
    return config.feedback.prefill and can_prefill((spec or config.judge_spec()).backend)


def judge_method(config, spec=None) -> str:
    """logprobs or votes: feedback.method, where auto votes for a judge whose spec says it has no log-probs."""
    method = config.feedback.method
    if method != "auto":
        return method
    options = (spec or config.judge_spec()).options
    return "logprobs" if getattr(options, "logprobs", True) else "votes"


def vote_of(reply: str) -> str | None:
    """"A" or "B" when the reply is a vote in one of the accepted forms, else None (never guessed)."""
    m = _VOTE.fullmatch(reply.strip())
    return next(g for g in m.groups() if g).upper() if m else None


def soft_label(logprobs: Sequence[float]) -> tuple[float, float] | None:
    """(P(first option) normalized over both, their raw total mass), or None when unusable.

    Unusable: a non-finite score, or two identical ones, which is what a judge
    gives when neither letter is among its likely tokens (e.g. both outside an
    API's top-k): a 50/50 label made of no information must not pass for a tie.
    """
    la, lb = logprobs
    if not (math.isfinite(la) and math.isfinite(lb)) or la == lb:
        return None
    top = max(la, lb)
    ea, eb = math.exp(la - top), math.exp(lb - top)
    return ea / (ea + eb), math.exp(top) * (ea + eb)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class Judge:
    """Scores Comparisons through `Calls` (the engine's, or `calls(backend)` for direct use)."""

    def __init__(self, constitution: Constitution, principles: int = 2, seed: int = 0,
                 cot: bool = False, clamp: tuple[float, float] = (0.4, 0.6),
                 cot_sampling: Sampling = Sampling(max_new_tokens=96, repetition_penalty=1.1),
                 prefill: bool = False, votes: int = 0,
                 vote_sampling: Sampling = Sampling(max_new_tokens=16, temperature=1.0)):
        self.constitution = constitution
        self.principles = constitution.comparison_principles
        if not self.principles:
            raise ValueError("no principle has a comparison question; AI feedback needs at least one")
        self.k = min(principles, len(self.principles))
        self.seed, self.cot, self.clamp, self.cot_sampling = seed, cot, clamp, cot_sampling
        self.votes, self.vote_sampling = votes, replace(vote_sampling, schema="choice")  # votes 0: log-probs
        self.prefill = prefill and not votes  # False for API backends, which cannot continue an assistant turn

    @classmethod
    def for_feedback(cls, config, constitution: Constitution, seed_offset: int = 0) -> "Judge":
        """The judge exactly as `--feedback` labels with it (a PipelineConfig's feedback settings)."""
        fb = config.feedback
        votes = fb.votes if judge_method(config) == "votes" else 0
        return cls(constitution, fb.principles, config.seed + seed_offset, fb.cot, fb.cot_clamp,
                   Sampling(**fb.cot_sampling.model_dump()), prefill=prefill_for(config), votes=votes,
                   vote_sampling=Sampling(**fb.vote_sampling.model_dump()))

    def draw(self, comparison_id: str) -> list[Principle]:
        return rank_principles(self.principles, comparison_id, "judge", self.seed)[: self.k]

    def calls(self, backend: Backend, progress=None) -> BackendCalls:
        """Calls straight to one (possibly cached) backend, every step ticking one progress callback."""
        def sampling(stage: str, call_id: str) -> Sampling:
            if stage == SCORE_STAGE:  # votes: each its own seed
                return replace(self.vote_sampling, seed=seed_for(self.seed, call_id, stage))
            return self.cot_sampling

        return BackendCalls(backend, backend, sampling=sampling, progress=lambda stage, units: progress)

    def compare(self, items: Sequence[Comparison], calls: Calls) -> list[Verdict | CallFailed]:
        # One job per (comparison, principle, order): a first means a is option (A).
        jobs = [(n, p, a_first) for n, item in enumerate(items) for p in self.draw(item.id)
                for a_first in (True, False)]
        convs, ids = [], []
        answer = VOTE_REQUEST if self.votes else "" if self.prefill else ANSWER
        ending = COT_REQUEST if self.cot else answer
        shots = {p.id: few_shot_turns(self.constitution, p, self.prefill, bool(self.votes)) for p in self.principles}
        for n, p, a_first in jobs:
            item = items[n]
            first, second = (item.a, item.b) if a_first else (item.b, item.a)
            convs.append(shots[p.id] + [{"role": "user", "content": judge_prompt(item.prompt, first, second, p.comparison, ending)}])
            ids.append(ID_SEP.join([item.id, p.id, str(int(a_first))]))
        failed: dict[int, CallFailed] = {}
        reasoning: dict[int, list[str]] = {}
        usable = [True] * len(jobs)
        if self.cot:
            thoughts = calls.chat(COT_STAGE, convs, ids)
            for j, thought in enumerate(thoughts):
                n = jobs[j][0]
                if isinstance(thought, CallFailed):
                    failed.setdefault(n, thought)
                    continue
                usable[j] = bool(thought.strip())
                reasoning.setdefault(n, []).append(thought)
                convs[j] = convs[j] + [{"role": "assistant", "content": thought},
                                       {"role": "user", "content": COT_FOLLOW_UP + (" " + answer if answer else "")}]
        if self.prefill:
            convs = [c + [answer_turn(True)] for c in convs]
        live = [j for j in range(len(jobs)) if jobs[j][0] not in failed]
        malformed = [0] * len(items)
        if self.votes:
            scores = self._vote(calls, live, convs, ids, jobs, malformed)
        else:
            scores = dict(zip(live, calls.score(SCORE_STAGE, [convs[j] for j in live], [ids[j] for j in live], CHOICES)))
        per: dict[int, dict[str, dict]] = {n: {} for n in range(len(items))}
        masses: dict[int, list[float]] = {}
        for j, (n, p, a_first) in enumerate(jobs):
            s = scores.get(j)
            if isinstance(s, CallFailed):
                failed.setdefault(n, s)
            if n in failed:
                continue
            label = (s if self.votes else soft_label(s)) if usable[j] else None
            if label is None:  # (a job's malformed votes are counted one by one in _vote)
                malformed[n] += 0 if self.votes and usable[j] else 1
                continue
            p_option_a, mass = label
            p_a = p_option_a if a_first else 1 - p_option_a
            if self.cot:
                p_a = min(max(p_a, self.clamp[0]), self.clamp[1])
            masses.setdefault(n, []).append(mass)
            per[n].setdefault(p.id, {"principle_id": p.id})["p_first" if a_first else "p_second"] = p_a
        verdicts: list[Verdict | CallFailed] = []
        for n, item in enumerate(items):
            if n in failed:
                verdicts.append(failed[n])
                continue
            rows = list(per[n].values())
            p_first = _mean([r["p_first"] for r in rows if "p_first" in r])
            p_second = _mean([r["p_second"] for r in rows if "p_second" in r])
            both = p_first is not None and p_second is not None
            verdicts.append(Verdict(
                id=item.id, p_a=(p_first + p_second) / 2 if both else None,
                p_first=p_first, p_second=p_second,
                principle_ids=[p.id for p in self.draw(item.id)], per_principle=rows,
                position_consistent=both and (p_first - 0.5) * (p_second - 0.5) > 0,
                malformed=malformed[n], option_mass=_mean(masses.get(n, [])),
                reasoning=reasoning.get(n, []),
            ))
        return verdicts

    def _vote(self, calls: Calls, live: list[int], convs, ids, jobs, malformed: list[int]) -> dict:
        """Each live job asked `votes` times (sampled, each its own seed); its label is
        (share of votes for option A, share of replies that were votes), or None without any vote."""
        asked = [(j, v) for j in live for v in range(self.votes)]
        replies = calls.chat(SCORE_STAGE, [convs[j] for j, _ in asked], [f"{ids[j]}{ID_SEP}vote{v}" for j, v in asked])
        tally: dict[int, list] = {j: [] for j in live}
        for (j, _), reply in zip(asked, replies):
            if isinstance(reply, CallFailed):
                tally[j] = reply
            elif isinstance(tally[j], list):
                tally[j].append(vote_of(reply))
        labels: dict[int, object] = {}
        for j, got in tally.items():
            if isinstance(got, CallFailed):
                labels[j] = got
                continue
            valid = [v for v in got if v]
            malformed[jobs[j][0]] += len(got) - len(valid)
            # Votes already missing count as malformed above; no vote at all is no label (not 50/50).
            labels[j] = (valid.count("A") / len(valid), len(valid) / len(got)) if valid else None
        return labels
