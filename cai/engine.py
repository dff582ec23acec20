"""The stage scheduler: pending examples in chunks, each chunk stage by stage, every call cached.

A chunk (`chunk_size` examples) goes through the pipeline's Stages (SL-CAI,
then AI feedback), each step as one whole batch handed to the backend through
the call cache, then its records are appended as one shard. Memory stays flat however many prompts there are, and a killed run
loses at most the chunk in flight, whose model calls are already in the cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cai.backends import Backend, Sampling
from cai.cache import Cache, CachedBackend
from cai.config import PipelineConfig
from cai.constitution import Constitution
from cai.critique import SLCAI
from cai.judge import PROMPT_VERSION, Judge, judge_method, prefill_for
from cai.pairs import FeedbackStage
from cai.progress import StageProgress
from cai.records import RecordStore, new_record
from cai.stage import BackendCalls, Stage, kind, seed_for

RECORD_VERSION = 1  # bump when the record layout changes, so old records are not reused


@dataclass
class Stats:
    model_calls: int = 0
    cache_hits: int = 0
    resumed: int = 0
    generated: int = 0
    judge_calls: int = 0  # of model_calls, those that scored a judge's options
    stage_calls: Counter = field(default_factory=Counter)  # model calls by stage kind
    failed: int = 0  # examples left pending because a call failed; retried by the next run
    failed_calls: int = 0
    errors: list = field(default_factory=list)  # a few (stage, error) samples for run.json
    stopped: str | None = None  # why the run stopped early (a budget), with how to continue
    stage_seconds: Counter = field(default_factory=Counter)
    tokens: dict = field(default_factory=dict)  # step kind -> Counter(input, output, saved_input, saved_output)
    model_tokens: dict = field(default_factory=dict)  # model identity -> the same


def _prompt_digest(example: dict) -> str:
    """What a record depends on from its example: the prompt, and whether it is kept unrevised."""
    text = example["prompt"] + ("\x1fkept" if example.get("kept") else "")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def build_stages(config: PipelineConfig, constitution: Constitution) -> list[Stage]:
    """The pipeline's stages: SL-CAI, then AI feedback when enabled."""
    slcai = SLCAI(constitution, config.rounds, config.seed, config.few_shot, config.system_prompt)
    stages: list[Stage] = [slcai]
    fb = config.feedback
    if fb.enabled:
        stages.append(FeedbackStage(Judge.for_feedback(config, constitution), fb, slcai.system))
    return stages


class Engine:
    """Runs a list of Stages over pending examples, chunk by chunk, every call through the cache.

    `policy` and `judge` are any Backends (lazy ones load on their first cache miss).
    """

    def __init__(self, config: PipelineConfig, constitution: Constitution, policy: Backend,
                 out: Path, progress: StageProgress | None = None, judge: Backend | None = None,
                 readonly: bool = False, stages: list[Stage] | None = None):
        self.config = config
        self.constitution = constitution
        self.out = Path(out)
        self.store = RecordStore(self.out / "records", readonly=readonly)
        self.cache = Cache(self.out / "cache.sqlite", enabled=config.cache, readonly=readonly)
        self.policy = CachedBackend(policy, self.cache)
        self.judge = CachedBackend(judge, self.cache) if judge is not None else self.policy
        self.progress = progress
        self.stages = stages if stages is not None else build_stages(config, constitution)
        self.reset_counts()
        # Judge steps whose size is known only chunk by chunk (their bars grow as they go).
        self.open_ended = {st for st in self.step_names() if st.startswith("judge")}
        self.stats = Stats()
        self.budget = None  # a cai.usage.Budget, when the run has one
        self.fingerprint = self._fingerprint()

    def reset_counts(self) -> None:
        """Fresh per-step call counters (a Ray worker reports them block by block)."""
        self.calls = BackendCalls(self.policy, self.judge, self._sampling, self._progress_for)

    def step_names(self) -> list[str]:
        return [name for stage in self.stages for name in stage.stages()]

    def _fingerprint(self) -> str:
        """What a record's content depends on, besides its prompt."""
        c = self.config
        parts = {
            "record_version": RECORD_VERSION, "model": self.policy.identity,
            "constitution": self.constitution.sha256, "rounds": c.rounds, "seed": c.seed,
            "few_shot": c.few_shot, "system_prompt": c.system_prompt,
            "sampling": c.sampling.model_dump(),
        }
        if c.feedback.enabled:
            # prefill counts through judge_prompt, so runs made before the setting keep their fingerprint
            voting = {"method", "votes", "vote_sampling"}  # counted through judge_prompt, below
            parts.update(feedback=c.feedback.model_dump(exclude={"prefill"} | voting), judge=self.judge.identity)
            asked = {"version": PROMPT_VERSION, "prefill": prefill_for(c)}
            if judge_method(c) == "votes":
                asked.update(c.feedback.model_dump(include=voting), method="votes")
            if asked != {"version": 1, "prefill": False}:  # the plain form keeps older runs' fingerprints
                parts["judge_prompt"] = asked
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def _sampling(self, stage: str, example_id: str) -> Sampling:
        fb = self.config.feedback
        s = {"sample": fb.sample_sampling, "judge-cot": fb.cot_sampling, "judge": fb.vote_sampling}.get(
            kind(stage)) or getattr(self.config.sampling, kind(stage))
        # Chat calls at the judge step are votes (scored calls take no sampling).
        return Sampling(**s.model_dump(), seed=seed_for(self.config.seed, example_id, stage),
                        schema="choice" if kind(stage) == "judge" else None)

    def _progress_for(self, stage: str, units: int):
        if not self.progress:
            return None
        if stage in self.open_ended:  # judge steps: how many calls a chunk needs is known only now
            self.progress.extend(stage, units)
        self.progress.start(stage)
        return lambda n: self.progress.advance(stage, n)

    def collect_stats(self) -> Stats:
        s, c = self.stats, self.calls
        s.stage_calls = Counter(+c.calls)
        s.model_calls = sum(c.calls.values())
        s.cache_hits = sum(c.hits.values())
        s.judge_calls = c.calls["judge"]
        s.failed_calls = self.policy.failed + (self.judge.failed if self.judge is not self.policy else 0)
        s.stage_seconds = Counter(c.seconds)
        s.tokens, s.model_tokens = c.tokens, c.model_tokens
        return s

    def pending(self, examples: list[dict]) -> list[dict]:
        """Examples without a record made with this fingerprint for this exact prompt."""
        done = {r["id"]: r.get("prompt_sha") for r in self.store.current(self.fingerprint)}
        todo = [ex for ex in examples if done.get(ex["id"]) != _prompt_digest(ex)]
        self.stats.resumed = len(examples) - len(todo)
        return todo

    def add_bars(self, todo: list[dict]) -> None:
        if self.progress:
            for stage in self.step_names():
                self.progress.add(stage, 0 if stage in self.open_ended else len(todo))

    def keep(self, records: list[dict]) -> None:
        """Store a finished chunk's records as one shard; failed ones stay pending for the next run."""
        done = [rec for rec in records if "failed" not in rec]
        for rec in records:
            rec["created"] = time.time()
            if "failed" in rec:
                self.stats.failed += 1
                if len(self.stats.errors) < 5:
                    self.stats.errors.append({"id": rec["id"], **rec["failed"]})
        self.store.append(done)
        self.stats.generated += len(done)

    def run(self, examples: list[dict]) -> Stats:
        self.store.sweep()
        todo = self.pending(examples)
        self.add_bars(todo)
        size = self.config.chunk_size
        try:
            for start in range(0, len(todo), size):
                chunk = todo[start:start + size]
                if self.over_budget(start, len(chunk), len(todo) - start):
                    break
                self.keep(self.process(chunk))
        finally:
            self.collect_stats()
            self.cache.close()
        return self.stats

    def over_budget(self, done: int, next_n: int, left: int) -> bool:
        """Whether the budget (set by the generate job) stops the run before the next `next_n` prompts."""
        if self.budget is None:
            return False
        self.stats.stopped = self.budget.stop_before(self.calls.model_tokens, done, next_n, left)
        return self.stats.stopped is not None

    @property
    def load_seconds(self) -> float:
        return self.calls.load_seconds

    def backend_stats(self, role: str) -> dict:
        """The policy's or judge's backend counters (requests, retries, ...) for run.json."""
        backend = self.policy if role == "policy" else self.judge
        return dict(getattr(backend, "stats", {}) or {})

    def process(self, chunk: list[dict]) -> list[dict]:
        """One chunk through every stage; records come back filled (or marked failed), not stored."""
        meta = {"model": self.policy.identity, "constitution_sha256": self.constitution.sha256}
        records = [new_record(ex, self.fingerprint, {**meta, "prompt_sha": _prompt_digest(ex)})
                   for ex in chunk]
        for stage in self.stages:
            stage.run(records, self.calls)
        for rec in records:  # a reasoning model's thinking: kept, never in the answers
            if rec["id"] in self.calls.thinking:
                rec["thinking"] = self.calls.thinking.pop(rec["id"])
        return records

    def current_records(self, examples: list[dict]):
        """This run's records, in prompt order of the records' shards, for the dataset."""
        wanted = {ex["id"] for ex in examples}
        return (r for r in self.store.current(self.fingerprint) if r["id"] in wanted)
