"""The Stage protocol, and the Calls through which a stage reaches its models.

A stage (SL-CAI, AI feedback) fills records in place, a block of examples at
a time, and asks for model calls only through `Calls`: each step of a stage
hands over all of its block's conversations at once, named by stage and
example id. That keeps three doors open:
- the engine decides sampling, seeds, caching and progress, not the stage;
- a block can run its stages in another process or on another machine: a
  stage is built from the config and constitution alone and holds no model;
- a stage step's pending calls can be collected as one batch of requests
  before any is answered (a provider's batch API; `--plan` counts them so).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from typing import Callable, Protocol, Sequence

from cai import reasoning
from cai.backends import Backend, CallFailed, Conversation, Progress, Sampling

JUDGE_PREFIX = "judge"  # stages whose calls go to the judge model
ID_SEP = "\x1f"  # a call id is its example's id, then (judge calls) pair, principle and order, and vote


class Calls(Protocol):
    def chat(self, stage: str, conversations: list[Conversation], ids: list[str]) -> list[str | CallFailed]:
        """One completion per conversation; `ids` (one per conversation) seed sampled calls."""

    def score(self, stage: str, conversations: list[Conversation], ids: list[str],
              choices: Sequence[str]) -> list[list[float] | CallFailed]:
        """Log-probabilities of each choice as the start of the reply (the judge's soft labels)."""


class Stage(Protocol):
    def stages(self) -> list[str]:
        """The names of this stage's steps, in order (progress bars, per-step counts)."""

    def run(self, records: list[dict], calls: Calls) -> None:
        """Fill the records in place; a record whose call failed gets `failed` {stage, error}."""


def seed_for(base: int, example_id: str, stage: str) -> int:
    """A per-call sampling seed: the same example and stage sample the same way in any batch."""
    digest = hashlib.sha256(f"{base}\x1f{example_id}\x1f{stage}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def kind(stage: str) -> str:
    return stage.split(":")[0]


class BackendCalls:
    """Calls answered by backends: `judge*` steps by the judge, the rest by the policy.

    `sampling(stage, example_id)` gives each call's settings; `progress(stage, units)`
    is told a step's size (conversations, times choices when scoring) and gives
    the callback the step reports finished units to (or None). Calls, cache
    hits and seconds are counted per step kind, read off the (cached) backends.
    """

    def __init__(self, policy: Backend, judge: Backend | None = None,
                 sampling: Callable[[str, str], Sampling] | None = None,
                 progress: Callable[[str, int], Progress | None] | None = None):
        self.policy, self.judge = policy, judge or policy
        self.sampling = sampling or (lambda stage, example_id: Sampling())
        self.progress = progress or (lambda stage, units: None)
        self.calls: Counter = Counter()  # model calls by step kind
        self.hits: Counter = Counter()
        self.seconds: Counter = Counter()
        self.load_seconds = 0.0
        self.thinking: dict[str, dict[str, str]] = {}  # example id -> {step: thinking} (cai/reasoning.py)
        # Tokens (input, output, saved_input, saved_output) by step kind and by model identity.
        self.tokens: dict[str, Counter] = {}
        self.model_tokens: dict[str, Counter] = {}

    def backend_for(self, stage: str) -> Backend:
        return self.judge if stage.startswith(JUDGE_PREFIX) else self.policy

    def _counted(self, stage: str, backend, run):
        started = time.perf_counter()
        calls, hits = getattr(backend, "calls", 0), getattr(backend, "hits", 0)
        loading = getattr(backend, "load_seconds", 0.0)
        tokens = Counter(getattr(backend, "tokens", None) or {})
        try:
            return run()
        finally:
            spent = Counter(getattr(backend, "tokens", None) or {})
            spent.subtract(tokens)
            self.tokens.setdefault(kind(stage), Counter()).update(+spent)
            self.model_tokens.setdefault(backend.identity, Counter()).update(+spent)
            self.calls[kind(stage)] += getattr(backend, "calls", 0) - calls
            self.hits[kind(stage)] += getattr(backend, "hits", 0) - hits
            # A lazy backend's model load is not the step's work: counted apart (load_seconds).
            load = getattr(backend, "load_seconds", 0.0) - loading
            self.load_seconds += load
            self.seconds[kind(stage)] += time.perf_counter() - started - load

    def chat(self, stage: str, conversations: list[Conversation], ids: list[str]) -> list:
        backend = self.backend_for(stage)
        sampling = [self.sampling(stage, i) for i in ids]
        outs = self._counted(stage, backend, lambda: backend.chat(
            conversations, sampling, progress=self.progress(stage, len(conversations))) if conversations else [])
        return [self._answer(stage, i, out) for i, out in zip(ids, outs)]

    def _answer(self, stage: str, call_id: str, out):
        """The reply without a reasoning model's thinking, which is filed under its example's id."""
        if not isinstance(out, str):
            return out
        answer, thinking = reasoning.split(out)
        if thinking is not None:
            owner, *rest = call_id.split(ID_SEP)
            self.thinking.setdefault(owner, {})["/".join([stage, *rest])] = thinking
        return answer

    def score(self, stage: str, conversations: list[Conversation], ids: list[str], choices: Sequence[str]) -> list:
        backend = self.judge
        return self._counted(stage, backend, lambda: backend.choice_logprobs(
            conversations, choices, progress=self.progress(stage, len(conversations) * len(choices)))
            if conversations else [])
