"""`cai audit`: judge the probe pairs every way the figures need, in one batch, and write the report.

The judge is built exactly as `--feedback` builds it (Judge.for_feedback: the
same principles per comparison, chain of thought and clamp), so one set of
verdicts yields the raw figures (first principle, shown order) and the
mitigated ones (the label `--feedback` would give). Calls go through the call
cache in OUT/cache.sqlite, committed a chunk at a time: an interrupted audit
resumes where it stopped, and a re-run is free.

Self-preference, when the judge is another model than the policy: both models
answer the same prompts through their own backends, the judge compares its
model's answer with the policy's (both orders, its principles), and the policy
model judges the same pairs, so quality and self-preference can be told apart
(sections.SELF_MEASURES).
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from cai.audit import figures as F
from cai.audit.probe_files import load_probe_files
from cai.audit.probes import PERTURBATIONS, Probe, as_list, load_probes, padded, perturbed, sentences, target_first
from cai.audit.report import write_html
from cai.audit.sections import SECTIONS, assemble
from cai.backends import Sampling
from cai.backends.loading import LazyBackend, close
from cai.backends.specs import model_spec
from cai.cache import Cache, CachedBackend
from cai.config import PipelineConfig
from cai.constitution import load_constitution
from cai.errors import InputError, Problem
from cai.judge import Comparison, Judge, prefill_for
from cai.models import EMBEDDED, SECOND, SHIPPED
from cai.prompts import load_prompts
from cai.runfiles import package_versions, write_json, write_text_atomic

__all__ = ["SECTIONS", "run_audit"]
SELF_PREFERENCE_PROMPTS = 16
ANSWERS_FILE = "self_preference.jsonl"  # both models' answers and both judges' labels, per prompt
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


@dataclass
class _SelfPreference:
    """Both models' answers to the same prompts, paired for judging (None: not measured, see `note`)."""

    note: str
    batch: _Batch | None = None
    policy: CachedBackend | None = None  # the other model: it wrote the other answers and judges them too
    rows: list[dict] = field(default_factory=list)  # per prompt: id, prompt, both answers
    info: dict = field(default_factory=dict)


def _self_preference(config: PipelineConfig, judge_backend: CachedBackend, limit: int | None, cache: Cache,
                     tie_threshold: float, policy_backend=None, progress=None) -> _SelfPreference:
    """The judge model's and the policy's greedy answers to the pipeline's first prompts, as own-vs-other pairs.

    Prompts: the pipeline's prompt sources as generation sees them (held-out `cai eval` prompts left out),
    round-robin over the sources, at most SELF_PREFERENCE_PROMPTS (and at most --limit): the judge labels
    answers to those prompts, and nothing the audit writes is trained on. Greedy, with the respond stage's
    max_new_tokens and repetition penalty, for both models alike.
    """
    other_spec, whose = config.policy, "the policy's"
    if config.judge_is_policy():
        # A shipped model judging its own answers is compared with the other shipped family's, offline.
        other = {EMBEDDED: SECOND, SECOND: EMBEDDED}.get(config.policy.model)
        in_process = config.policy.backend in ("auto", "transformers", "vllm")
        if not (other and in_process and importlib.util.find_spec(SHIPPED[other].package)):
            return _SelfPreference(
                "not measured: the judge is the policy model, so there is no second model's answers to compare "
                f"with; audit a judge from another family, e.g. --judge-model {SECOND} (ships offline: "
                f"`{SHIPPED[SECOND].install}`)")
        other_spec = model_spec(backend="transformers", model=other)
        whose = f"{other}'s (the other shipped family)"
    n = min(limit or SELF_PREFERENCE_PROMPTS, SELF_PREFERENCE_PROMPTS)
    prompts = load_prompts(config.prompts, n,
                           holdout=config.holdout)
    inner = policy_backend or LazyBackend(other_spec)
    policy = CachedBackend(inner, cache, commit_every=CHUNK)
    respond = config.sampling.respond
    sampling = [Sampling(max_new_tokens=respond.max_new_tokens, temperature=0.0,
                         repetition_penalty=respond.repetition_penalty)] * len(prompts)
    convs = [[{"role": "user", "content": ex["prompt"]}] for ex in prompts]
    tick = None
    if progress:
        progress.add("answers", 2 * len(convs))
        tick = lambda n: progress.advance("answers", n)  # noqa: E731
    try:
        other = policy.chat(convs, sampling, tick)
        own = judge_backend.chat(convs, sampling, tick)
    except BaseException:
        if isinstance(inner, LazyBackend):
            close(inner)
        raise
    batch = _Batch(tie_threshold)
    rows = []
    for ex, mine, theirs in zip(prompts, own, other):
        if isinstance(mine, str) and isinstance(theirs, str):  # equal answers stay in, as ties
            batch.add("self", ex["id"], ex["id"], ex["prompt"], mine, theirs, cid=f"self:{ex['id']}")
            rows.append({"id": ex["id"], "prompt": ex["prompt"], "judge_model_answer": mine, "policy_answer": theirs})
    info = {"judge_model": judge_backend.identity, "policy_model": policy.identity, "prompts": len(rows),
            "prompts_asked": len(prompts), "prompt_source": ", ".join(sorted({ex["source"] for ex in prompts})),
            "sampling": {"temperature": 0.0, "max_new_tokens": respond.max_new_tokens,
                         "repetition_penalty": respond.repetition_penalty},
            "answers_file": ANSWERS_FILE}
    note = f"own answers ({judge_backend.identity}) vs {whose} ({policy.identity}) on {len(rows)} prompts"
    return _SelfPreference(note, batch, policy, rows, info)


def _other_model_as_judge(config: PipelineConfig, constitution, sp: _SelfPreference, tick) -> tuple[dict | None, str]:
    """The same pairs, the same principles and orders, judged by the other model: what the other family says."""
    spec = getattr(sp.policy.backend, "spec", config.policy)
    judge = Judge.for_feedback(config, constitution)
    judge.prefill = prefill_for(config, spec)
    try:
        got = sp.batch.judge(judge, sp.policy, tick).get("self", {})
    except RuntimeError as exc:  # e.g. a server without logprobs: the main figure stands without it
        return None, f"not measured: the policy model could not judge ({exc})"
    return got, f"the same pairs judged by the policy model ({sp.policy.identity})"


def run_audit(config: PipelineConfig, out: Path, limit: int | None = None, progress=None, judge_backend=None,
              probe_files: list[Path | str] | None = None, policy_backend=None) -> dict:
    """`probe_files`: a user's own known-better pairs (probe_files.py), used instead of the shipped probes.
    `judge_backend`, `policy_backend`: backends to use instead of the pipeline's judge and policy specs."""
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
    sp = _SelfPreference("")
    try:
        judge = Judge.for_feedback(config, constitution)
        # A fresh principle draw: the noise floor the perturbation figures are read against.
        noise_judge = Judge.for_feedback(config, constitution, seed_offset=1)
        probe_batch = _probe_batch(probes, tie)
        noise = _Batch(tie)
        for p in probes:
            noise.add("base", p.id, p.group, p.prompt, p.better, p.worse)
        sp = _self_preference(config, judge_backend, limit, cache, tie, policy_backend, progress)
        batches = [probe_batch, noise] + ([sp.batch] if sp.batch else [])
        # Progress units: 2 orders x 2 scored options per principle, plus 2 chains of thought with cot.
        per = judge.k * (6 if judge.cot else 4)
        total = sum(len(b.to_judge) for b in batches) * per
        tick = other_tick = None
        if progress:
            progress.add("judge", total)
            tick = lambda n: progress.advance("judge", n)  # noqa: E731
            if sp.batch:
                progress.add("other model as judge", len(sp.batch.to_judge) * per)
                other_tick = lambda n: progress.advance("other model as judge", n)  # noqa: E731
        got = probe_batch.judge(judge, judge_backend, tick)
        got["noise"] = noise.judge(noise_judge, judge_backend, tick)["base"]
        own = cross = None
        cross_note = ""
        if sp.batch:
            own = sp.batch.judge(judge, judge_backend, tick).get("self", {})
            cross, cross_note = _other_model_as_judge(config, constitution, sp, other_tick)
    finally:
        cache.close()
        if inner is not judge_backend and isinstance(inner, LazyBackend):
            close(inner)
        if sp.policy is not None and isinstance(sp.policy.backend, LazyBackend):
            close(sp.policy.backend)
    report = assemble(got, probes, own, sp.note, cross, cross_note, sp.info)
    sources: dict[str, int] = {}
    for p in probes:
        sources[p.source] = sources.get(p.source, 0) + 1
    policy = sp.policy
    meta = {"judge": {"identity": judge_backend.identity, "backend": config.judge_spec().backend,
                      "principles_per_comparison": judge.k, "seed": config.seed, "cot": judge.cot,
                      "cot_clamp": list(judge.clamp) if judge.cot else None, "tie_threshold": tie},
            "constitution": {"path": config.constitution, "name": constitution.name, "sha256": constitution.sha256},
            "probes": len(probes), "probe_sources": sources,
            "probe_files": [str(f) for f in probe_files] if probe_files else None,
            "comparisons": sum(len(b.items) for b in batches),  # the audited judge's
            "self_preference": ({**sp.info, "other_model_as_judge": cross is not None,
                                 "other_model_comparisons": len(sp.batch.items) if cross is not None else 0}
                                if sp.batch else None),
            "model_calls": judge_backend.calls + (policy.calls if policy else 0),
            "cache_hits": judge_backend.hits + (policy.hits if policy else 0),
            "seconds": round(time.time() - started, 1), "versions": package_versions()}
    out.mkdir(parents=True, exist_ok=True)
    if not sp.rows:
        (out / ANSWERS_FILE).unlink(missing_ok=True)  # a previous audit's, of other models
    else:
        write_text_atomic(out / ANSWERS_FILE, "".join(json.dumps(_answer_row(r, own, cross), ensure_ascii=False) + "\n"
                                                    for r in sp.rows))
    write_json(out / "report.json", report)
    write_json(out / "meta.json", meta)
    write_html(out / "report.html", report, meta)
    return {"report": report, "meta": meta}


def _answer_row(row: dict, own: dict | None, cross: dict | None) -> dict:
    """One prompt's two answers and P(the judge model's answer is better) from each judge (mitigated)."""
    label = lambda got: got[row["id"]].p("mitigated") if got and row["id"] in got else None  # noqa: E731
    return {**row, "p_judge_model_answer_better": {"by_judge_model": label(own), "by_policy_model": label(cross)}}
