"""`cai generate --plan`: which model calls a run would make, without loading a model or writing anything.

The run's own stages are played against the call cache with a stand-in
backend: a cached call returns its cached output, a missing one returns a
placeholder and is counted, and the placeholder flows into the next stage's
conversation, so everything downstream of a change is counted too (from the
first affected round on). That is exact whenever a recomputed output differs
from the old one; when a model happens to reproduce its old output word for
word, the real run finds later calls cached and makes fewer than planned.
"""

from __future__ import annotations

import hashlib
import json

from cai.backends.loading import precheck, spec_identity
from cai.config import PipelineConfig
from cai.engine import Engine
from cai import usage
from cai.generate import check_inputs
from cai.usage import estimate_input


PLACEHOLDER = "<not generated yet"


class _Planned:
    """Stands in for a backend: answers with placeholders (the engine counts the calls)."""

    supports_logprobs = True

    def __init__(self, identity: str):
        self.identity = identity
        self.made = 0

    def chat(self, conversations, sampling, progress=None):
        # Distinct words, so planned outputs never make equal conversations downstream and pass
        # the quality gates: judge calls on text not generated yet are an upper bound. As long as
        # a reply of max_new_tokens (~4 characters a token), so later turns' tokens are estimated too.
        first, self.made = self.made, self.made + len(conversations)
        out = [f"{PLACEHOLDER}> " + " ".join(hashlib.sha256(f"{first + i}:{k}".encode()).hexdigest()[:8]
                                             for k in range(max(12, s.max_new_tokens * 4 // 9)))
               for i, s in enumerate(sampling)]
        self.usage = [[estimate_input(c), s.max_new_tokens] for c, s in zip(conversations, sampling)]
        return out

    def choice_logprobs(self, conversations, choices, progress=None):
        self.usage = [[estimate_input(c), 0] for c in conversations]
        return [[-0.5, -1.0] for _ in conversations]


def plan(config: PipelineConfig) -> dict:
    """What `cai generate` with this config would do: records reused or rebuilt, model calls per stage,
    tokens (and cost, with prices) it would spend and save."""
    constitution, examples, notes = check_inputs(config)
    precheck(config.policy)  # what the run would refuse (a missing key, extra), said by the plan too
    if config.feedback.enabled and not config.judge_is_policy():
        precheck(config.judge, "--judge-model")
    return play(config, constitution, examples, notes)


def play(config: PipelineConfig, constitution, examples: list[dict], notes=()) -> dict:
    """The plan of checked inputs (generate estimates its tokens with it)."""
    policy = _Planned(spec_identity(config.policy))
    judge = None
    if config.feedback.enabled and not config.judge_is_policy():
        judge = _Planned(spec_identity(config.judge, "--judge-model"))
    engine = Engine(config, constitution, policy, config.resolved_out(), judge=judge, readonly=True)
    changed = 0
    try:
        todo = engine.pending(examples)
        for start in range(0, len(todo), config.chunk_size):
            for rec in engine.process(todo[start:start + config.chunk_size]):
                changed += PLACEHOLDER in json.dumps(rec)
    finally:
        engine.cache.close()
    s = engine.collect_stats()
    return {"prompts": len(examples), "backend": config.policy.backend, "backend_notes": notes,
            "records_reused": s.resumed, "records_rebuilt": len(todo),
            "records_with_new_text": changed, "model_calls": s.model_calls, "judge_calls": s.judge_calls,
            "cache_hits": s.cache_hits, "calls_by_stage": dict(sorted(s.stage_calls.items())),
            **usage.summary(s.tokens, s.model_tokens, usage.prices(config)),
            # A damaged shard is moved aside by the run (not by a plan); its examples count as rebuilt.
            "damaged_shards": [{k: q[k] for k in ("shard", "line", "error")} for q in engine.store.quarantined]}


def describe(p: dict) -> str:
    stages = ", ".join(f"{k} {v}" for k, v in p["calls_by_stage"].items()) or "none"
    notes = "".join(f"{n}\n" for n in p.get("backend_notes", ()))  # which backend `auto` chose
    t = p["tokens"]["total"]
    cost = f", about ${p['cost']['usd']:.2f}" if "cost" in p else ""
    return (notes + f"plan: {p['prompts']} prompts: {p['records_reused']} records reused as they are, "
            f"{p['records_rebuilt']} rebuilt ({p['records_with_new_text']} with new model text); "
            f"{p['model_calls']} model calls to make ({stages}), {p['cache_hits']} answered from the cache; "
            f"at most about {t['input']} input and {t['output']} output tokens{cost} (replies as long as "
            "max_new_tokens)"
            + "".join(f"; records/{d['shard']} line {d['line']} is damaged (the run moves it aside)"
                      for d in p["damaged_shards"]))
