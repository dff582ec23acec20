"""`cai audit`: judge the probe pairs every way the figures need, in one batch, and write the report.

The judge is built exactly as `--feedback` builds it (Judge.for_feedback: the
same principles per comparison, chain of thought and clamp), so one set of
verdicts yields the raw figures (first principle, shown order) and the
mitigated ones (the label `--feedback` would give). Calls go through the call
cache in OUT/cache.sqlite, committed a chunk at a time: an interrupted audit
resumes where it stopped, and a re-run is free.
"""

from __future__ import annotations

import time
from pathlib import Path

from cai.audit import figures as F
from cai.audit.probe_files import load_probe_files
from cai.audit.probes import PERTURBATIONS, Probe, as_list, load_probes, padded, perturbed, sentences, target_first
from cai.audit.report import write_html
from cai.audit.sections import SECTIONS, assemble
from cai.backends import Sampling
from cai.backends.loading import LazyBackend, close
from cai.cache import Cache, CachedBackend
from cai.config import PipelineConfig, PromptSource
from cai.constitution import load_constitution
from cai.errors import InputError, Problem
from cai.judge import Comparison, Judge
from cai.prompts import load_prompts
from cai.runfiles import package_versions, write_json

__all__ = ["SECTIONS", "run_audit"]
SELF_PREFERENCE_PROMPTS = 16
CHUNK = 64  # calls per cache commit: what an interrupt can lose


class _Batch:
    """Comparisons collected by group, judged together, handed back as Targets."""

    def __init__(self, tie_threshold: float):
        self.items: list[Comparison] = []
        self.meta: list[tuple[str, str, bool, str]] = []  # (group, key, a_is_target, cluster)
        self.tie_threshold = tie_threshold

    def add(self, group: str, key: str, cluster: str, prompt: str, target: str, other: str, cid: str = "") -> None:
        # The order is the probe's (its key's) alone, the same in every group: see probes.target_first.
        first = target_first(key)
        a, b = (target, other) if first else (other, target)
        self.items.append(Comparison(cid or key, prompt, a, b))
        self.meta.append((group, key, first, cluster))

    @property
    def to_judge(self) -> list[int]:
        """Comparisons of two different texts; equal ones are ties without asking."""
        return [n for n, item in enumerate(self.items) if item.a.strip() != item.b.strip()]

    def judge(self, judge: Judge, backend, progress=None) -> dict[str, dict[str, F.Target]]:
        send = self.to_judge
        verdicts = dict(zip(send, judge.compare([self.items[n] for n in send], judge.calls(backend, progress))))
        out: dict[str, dict[str, F.Target]] = {}
        for n, (group, key, a_is_target, cluster) in enumerate(self.meta):
            v = verdicts.get(n)
            if isinstance(v, Exception):
                raise RuntimeError(f"the judge failed on {group}/{key}: {v}")
            out.setdefault(group, {})[key] = F.Target(v, a_is_target, self.items[n], cluster, self.tie_threshold)
        return out


def _probe_batch(probes: list[Probe], tie_threshold: float) -> _Batch:
    batch = _Batch(tie_threshold)
    for p in probes:
        # Every variant reuses the probe's id: the judge draws the same principles, the order is the
        # same, and only the edit differs.
        add = lambda group, target, other: batch.add(group, p.id, p.group, p.prompt, target, other)  # noqa: E731
        add("base", p.better, p.worse)
        add("padded_same", padded(p.better), p.better)
        add("padded_worse", p.better, padded(p.worse))
        if len(sentences(p.better)) >= 2:
            add("format", as_list(p.better), p.better)
        for name in PERTURBATIONS:
            q = perturbed(p, name)
            add(f"perturbed:{name}", q.better, q.worse)
    return batch


def _self_preference(config: PipelineConfig, judge_backend: CachedBackend, limit: int | None, cache: Cache,
                     tie_threshold: float) -> tuple[_Batch | None, CachedBackend | None, str]:
    if config.judge_is_policy():
        return None, None, ("not measured: the judge is the policy model, so there is no second model's answers to "
                            "compare with; configure judge: (or --judge-model) with a different model")
    prompts = load_prompts([PromptSource(path=s.path, field=s.field) for s in config.prompts],
                           min(limit or SELF_PREFERENCE_PROMPTS, SELF_PREFERENCE_PROMPTS))
    policy = CachedBackend(LazyBackend(config.policy), cache, commit_every=CHUNK)
    try:
        s = config.sampling.respond
        sampling = [Sampling(**s.model_dump())] * len(prompts)
        convs = [[{"role": "user", "content": ex["prompt"]}] for ex in prompts]
        other = policy.chat(convs, sampling)
        own = judge_backend.chat(convs, sampling)
    finally:
        close(policy)
    batch = _Batch(tie_threshold)
    for ex, mine, theirs in zip(prompts, own, other):
        if isinstance(mine, str) and isinstance(theirs, str):  # equal answers stay in, as ties
            batch.add("self", ex["id"], ex["id"], ex["prompt"], mine, theirs, cid=f"self:{ex['id']}")
    return batch, policy, f"own answers ({judge_backend.identity}) vs the policy's ({policy.identity})"


def run_audit(config: PipelineConfig, out: Path, limit: int | None = None, progress=None, judge_backend=None,
              probe_files: list[Path | str] | None = None) -> dict:
    """`probe_files`: a user's own known-better pairs (probe_files.py), used instead of the shipped probes."""
    started = time.time()
    constitution = load_constitution(config.constitution)
    if not constitution.comparison_principles:
        raise InputError([Problem(config.constitution, None, "principles",
                                  "no principle has a comparison question; the audit judges with them")])
    probes = load_probe_files(probe_files)[:limit] if probe_files else load_probes(limit)
    tie = config.feedback.tie_threshold
    # The judge loads on its first cache miss: a finished audit re-run loads no model.
    inner = judge_backend or LazyBackend(config.judge_spec(), "--judge-model")
    cache = Cache(out / "cache.sqlite", enabled=config.cache)
    judge_backend = CachedBackend(inner, cache, commit_every=CHUNK)
    try:
        judge = Judge.for_feedback(config, constitution)
        # A fresh principle draw: the noise floor the perturbation figures are read against.
        noise_judge = Judge.for_feedback(config, constitution, seed_offset=1)
        probe_batch = _probe_batch(probes, tie)
        noise = _Batch(tie)
        for p in probes:
            noise.add("base", p.id, p.group, p.prompt, p.better, p.worse)
        self_batch, policy, self_note = _self_preference(config, judge_backend, limit, cache, tie)
        batches = [probe_batch, noise] + ([self_batch] if self_batch else [])
        # Progress units: 2 orders x 2 scored options per principle, plus 2 chains of thought with cot.
        total = sum(len(b.to_judge) for b in batches) * judge.k * (6 if judge.cot else 4)
        tick = None
        if progress:
            progress.add("judge", total)
            tick = lambda n: progress.advance("judge", n)  # noqa: E731
        got = probe_batch.judge(judge, judge_backend, tick)
        got["noise"] = noise.judge(noise_judge, judge_backend, tick)["base"]
        own = self_batch.judge(judge, judge_backend, tick).get("self", {}) if self_batch else None
    finally:
        cache.close()
        if inner is not judge_backend and isinstance(inner, LazyBackend):
            close(inner)
    report = assemble(got, probes, own, self_note)
    sources: dict[str, int] = {}
    for p in probes:
        sources[p.source] = sources.get(p.source, 0) + 1
    meta = {"judge": {"identity": judge_backend.identity, "backend": config.judge_spec().backend,
                      "principles_per_comparison": judge.k, "seed": config.seed, "cot": judge.cot,
                      "cot_clamp": list(judge.clamp) if judge.cot else None, "tie_threshold": tie},
            "constitution": {"path": config.constitution, "name": constitution.name, "sha256": constitution.sha256},
            "probes": len(probes), "probe_sources": sources,
            "probe_files": [str(f) for f in probe_files] if probe_files else None,
            "comparisons": sum(len(b.items) for b in batches),
            "model_calls": judge_backend.calls + (policy.calls if policy else 0),
            "cache_hits": judge_backend.hits + (policy.hits if policy else 0),
            "seconds": round(time.time() - started, 1), "versions": package_versions()}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    write_json(out / "meta.json", meta)
    write_html(out / "report.html", report, meta)
    return {"report": report, "meta": meta}
