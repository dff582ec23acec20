"""The stage scheduler: pending examples in chunks, each chunk stage by stage, every call cached.

A chunk (`chunk_size` examples) goes through respond, critique and revise as
whole batches handed to the backend, then its records are appended as one
shard. Memory stays flat however many prompts there are, and a killed run
loses at most the chunk in flight, whose model calls are already in the cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cai.backends import Backend, CallFailed, Conversation, Sampling
from cai.cache import Cache, call_key
from cai.config import PipelineConfig
from cai.constitution import Constitution
from cai.critique import SLCAI
from cai.feedback import Judge
from cai.pairs import FeedbackStage
from cai.progress import StageProgress
from cai.records import RecordStore, new_record

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
    stage_seconds: Counter = field(default_factory=Counter)


def _seed(base: int, example_id: str, stage: str) -> int:
    digest = hashlib.sha256(f"{base}\x1f{example_id}\x1f{stage}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _prompt_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Engine:
    def __init__(self, config: PipelineConfig, constitution: Constitution, backend: Backend,
                 out: Path, progress: StageProgress | None = None, judge_backend: Backend | None = None,
                 readonly: bool = False):
        self.config = config
        self.constitution = constitution
        self.backend = backend
        self.judge_backend = judge_backend or backend
        self.out = Path(out)
        self.store = RecordStore(self.out / "records")
        self.cache = Cache(self.out / "cache.sqlite", enabled=config.cache, readonly=readonly)
        self.progress = progress
        self.program = SLCAI(constitution, config.rounds, config.seed, config.few_shot,
                             config.system_prompt)
        self.feedback = None
        fb = config.feedback
        if fb.enabled:
            judge = Judge(self.judge_backend, constitution, fb.principles, config.seed, fb.cot,
                          fb.cot_clamp, self._sampling("judge-cot", ""))
            self.feedback = FeedbackStage(judge, fb, self.program.system)
        # Judge stages whose size is known only chunk by chunk (their bars grow as they go).
        self.open_ended = {st for st in (self.feedback.stages() if self.feedback else []) if st.startswith("judge")}
        self.stats = Stats()
        self.fingerprint = self._fingerprint()

    def _fingerprint(self) -> str:
        """What a record's content depends on, besides its prompt."""
        c = self.config
        parts = {
            "record_version": RECORD_VERSION, "model": self.backend.identity,
            "constitution": self.constitution.sha256, "rounds": c.rounds, "seed": c.seed,
            "few_shot": c.few_shot, "system_prompt": c.system_prompt,
            "sampling": c.sampling.model_dump(),
        }
        if c.feedback.enabled:
            parts.update(feedback=c.feedback.model_dump(), judge=self.judge_backend.identity)
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def _sampling(self, stage: str, example_id: str) -> Sampling:
        kind = stage.split(":")[0]
        fb = self.config.feedback
        s = {"sample": fb.sample_sampling, "judge-cot": fb.cot_sampling}.get(kind) or getattr(
            self.config.sampling, kind)
        return Sampling(**s.model_dump(), seed=_seed(self.config.seed, example_id, stage))

    def _backend_for(self, stage: str) -> Backend:
        return self.judge_backend if stage.startswith("judge") else self.backend

    def _call(self, stage: str, conversations: list[Conversation], ids: list[str]) -> list[str]:
        sampling = [self._sampling(stage, i) for i in ids]
        backend = self._backend_for(stage)
        keys = [call_key(backend.identity, "chat", conv, s.key()) for conv, s in zip(conversations, sampling)]
        return self._cached(stage, keys, backend.identity, 1, lambda missing, progress: backend.chat(
            [conversations[i] for i in missing], [sampling[i] for i in missing], progress=progress))

    def _score(self, stage: str, conversations: list[Conversation], ids: list[str],
               choices) -> list[list[float]]:
        """Cached choice_logprobs on the judge; progress counts (conversation, choice) units."""
        backend = self.judge_backend
        keys = [call_key(backend.identity, "choices", conv, {"choices": list(choices)}) for conv in conversations]
        before = self.stats.model_calls
        out = self._cached(stage, keys, backend.identity, len(choices), lambda missing, progress: (
            backend.choice_logprobs([conversations[i] for i in missing], choices, progress=progress)))
        self.stats.judge_calls += self.stats.model_calls - before
        return out

    def _cached(self, stage: str, keys: list[str], model: str, width: int, compute) -> list:
        """Answers for `keys` from the cache, the rest from `compute(missing indices, progress)`.

        `width` is how many progress units one call is worth (a judge call scores each choice).
        """
        started = time.perf_counter()
        kind = stage.split(":")[0]
        found = self.cache.get_many(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        self.stats.cache_hits += len(keys) - len(missing)
        self._progress_start(stage, len(keys) * width, (len(keys) - len(missing)) * width)
        if missing:
            outputs = compute(missing, (lambda n: self.progress.advance(stage, n)) if self.progress else None)
            self.stats.model_calls += len(missing)
            self.stats.stage_calls[kind] += len(missing)
            new = {keys[i]: out for i, out in zip(missing, outputs)}
            # Failures are answered this time but never cached: the next run retries them.
            self.cache.put_many((k, model, v) for k, v in new.items() if not isinstance(v, CallFailed))
            self.stats.failed_calls += sum(isinstance(v, CallFailed) for v in new.values())
            found.update(new)
        self.stats.stage_seconds[kind] += time.perf_counter() - started
        return [found[k] for k in keys]

    def _progress_start(self, stage: str, total: int, done: int) -> None:
        if not self.progress:
            return
        if stage in self.open_ended:  # judge stages: how many calls a chunk needs is known only now
            self.progress.extend(stage, total)
        self.progress.start(stage)
        if done:
            self.progress.advance(stage, done)

    def pending(self, examples: list[dict]) -> list[dict]:
        """Examples without a record made with this fingerprint for this exact prompt."""
        done = {r["id"]: r.get("prompt_sha") for r in self.store.current(self.fingerprint)}
        todo = [ex for ex in examples if done.get(ex["id"]) != _prompt_digest(ex["prompt"])]
        self.stats.resumed = len(examples) - len(todo)
        return todo

    def run(self, examples: list[dict]) -> Stats:
        self.store.sweep()
        todo = self.pending(examples)
        if self.progress:
            for stage in self.program.stages() + (self.feedback.stages() if self.feedback else []):
                self.progress.add(stage, 0 if stage in self.open_ended else len(todo))
        size = self.config.chunk_size
        try:
            for start in range(0, len(todo), size):
                records = self.process(todo[start:start + size])
                done = [rec for rec in records if "failed" not in rec]
                for rec in records:
                    rec["created"] = time.time()
                    if "failed" in rec:
                        self.stats.failed += 1
                        if len(self.stats.errors) < 5:
                            self.stats.errors.append({"id": rec["id"], **rec["failed"]})
                self.store.append(done)
                self.stats.generated += len(done)
        finally:
            self.cache.close()
        return self.stats

    def process(self, chunk: list[dict]) -> list[dict]:
        """One chunk through every stage; records come back filled (or marked failed), not stored."""
        meta = {"model": self.backend.identity, "constitution_sha256": self.constitution.sha256}
        records = [new_record(ex, self.fingerprint, {**meta, "prompt_sha": _prompt_digest(ex["prompt"])})
                   for ex in chunk]
        self.program.run(records, self._call)
        if self.feedback:
            self.feedback.run(records, self._call, self._score)
        return records

    def current_records(self, examples: list[dict]):
        """This run's records, in prompt order of the records' shards, for the dataset."""
        wanted = {ex["id"] for ex in examples}
        return (r for r in self.store.current(self.fingerprint) if r["id"] in wanted)
