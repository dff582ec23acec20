"""`cai audit`: judge the probe pairs every way the figures need, in one batch, and write the report.

Every comparison goes to the configured judge exactly as AI feedback would
send it (both orders, `k` principles), so one set of verdicts yields the raw
figures (first principle, shown order) and the mitigated ones (our label).
Calls go through the call cache in OUT/cache.sqlite, committed a chunk at a
time: an interrupted audit resumes where it stopped, and a re-run is free.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from cai.audit import figures as F
from cai.audit.probes import PERTURBATIONS, Probe, as_list, load_probes, padded, perturbed, sentences
from cai.audit.report import write_html
from cai.backends import Sampling
from cai.backends.loading import LazyBackend, close
from cai.cache import Cache, CachedBackend
from cai.config import PipelineConfig, PromptSource
from cai.constitution import load_constitution
from cai.errors import InputError, Problem
from cai.judge import Comparison, Judge
from cai.prompts import load_prompts
from cai.runfiles import package_versions, write_json

SECTIONS = ("position", "length", "format", "self_preference", "perturbations", "calibration")
SELF_PREFERENCE_PROMPTS = 16
CHUNK = 64  # calls per cache commit: what an interrupt can lose


class _Batch:
    """Comparisons collected by group, judged together, handed back as Targets."""

    def __init__(self):
        self.items: list[Comparison] = []
        self.meta: list[tuple[str, str, bool]] = []  # (group, key, a_is_target)

    def add(self, group: str, key: str, cid: str, prompt: str, target: str, other: str) -> None:
        coin = hashlib.sha256(f"{group}\x1f{key}".encode()).digest()[0] % 2 == 0
        a, b = (target, other) if coin else (other, target)
        self.items.append(Comparison(cid, prompt, a, b))
        self.meta.append((group, key, coin))

    def judge(self, judge: Judge, backend, progress=None) -> dict[str, dict[str, F.Target]]:
        out: dict[str, dict[str, F.Target]] = {}
        verdicts = judge.compare(self.items, judge.calls(backend, progress))
        for (group, key, a_is_target), item, v in zip(self.meta, self.items, verdicts):
            if isinstance(v, Exception):
                raise RuntimeError(f"the judge failed on {group}/{key}: {v}")
            out.setdefault(group, {})[key] = F.Target(v, a_is_target, item)
        return out


def _probe_batch(probes: list[Probe]) -> _Batch:
    batch = _Batch()
    for p in probes:
        # Perturbed and padded variants reuse the probe's id, so the judge draws the same
        # principles and only the edit differs.
        batch.add("base", p.id, p.id, p.prompt, p.better, p.worse)
        batch.add("padded_same", p.id, p.id, p.prompt, padded(p.better), p.better)
        batch.add("padded_worse", p.id, p.id, p.prompt, p.better, padded(p.worse))
        if len(sentences(p.better)) >= 2:
            batch.add("format", p.id, p.id, p.prompt, as_list(p.better), p.better)
        for name in PERTURBATIONS:
            q = perturbed(p, name)
            batch.add(f"perturbed:{name}", p.id, p.id, p.prompt, q.better, q.worse)
    return batch


def _self_preference(config: PipelineConfig, judge_backend: CachedBackend, limit: int | None,
                     cache: Cache) -> tuple[_Batch | None, str, CachedBackend | None]:
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
    batch = _Batch()
    for ex, mine, theirs in zip(prompts, own, other):
        if isinstance(mine, str) and isinstance(theirs, str) and mine.strip() != theirs.strip():
            batch.add("self", ex["id"], f"self:{ex['id']}", ex["prompt"], mine, theirs)
    return batch, policy, f"own answers ({judge_backend.identity}) vs the policy's ({policy.identity})"


def run_audit(config: PipelineConfig, out: Path, limit: int | None = None, progress=None, judge_backend=None) -> dict:
    started = time.time()
    constitution = load_constitution(config.constitution)
    if not constitution.comparison_principles:
        raise InputError([Problem(config.constitution, None, "principles",
                                  "no principle has a comparison question; the audit judges with them")])
    probes = load_probes(limit)
    # The judge loads on its first cache miss: a finished audit re-run loads no model.
    inner = judge_backend or LazyBackend(config.judge_spec(), "--judge-model")
    cache = Cache(out / "cache.sqlite", enabled=config.cache)
    judge_backend = CachedBackend(inner, cache, commit_every=CHUNK)
    try:
        k = max(config.feedback.principles, 2)
        judge = Judge(constitution, principles=k, seed=config.seed)
        # A fresh principle draw: the noise floor the perturbation figures are read against.
        noise_judge = Judge(constitution, principles=k, seed=config.seed + 1)
        probe_batch = _probe_batch(probes)
        self_batch, policy, self_note = _self_preference(config, judge_backend, limit, cache)
        total = (len(probe_batch.items) + len(probes) + (len(self_batch.items) if self_batch else 0)) * judge.k * 4
        tick = None
        if progress:
            progress.add("judge", total)
            tick = lambda n: progress.advance("judge", n)  # noqa: E731
        got = probe_batch.judge(judge, judge_backend, tick)
        noise = _Batch()
        for p in probes:
            noise.add("base", p.id, p.id, p.prompt, p.better, p.worse)
        got["noise"] = noise.judge(noise_judge, judge_backend, tick)["base"]
        own = self_batch.judge(judge, judge_backend, tick).get("self", {}) if self_batch else None
    finally:
        cache.close()
        if inner is not judge_backend and isinstance(inner, LazyBackend):
            close(inner)
    report = assemble(got, own, self_note)
    meta = {"judge": {"identity": judge_backend.identity, "backend": config.judge_spec().backend,
                      "principles_per_comparison": judge.k, "seed": config.seed},
            "constitution": {"path": config.constitution, "name": constitution.name, "sha256": constitution.sha256},
            "probes": len(probes), "comparisons": len(probe_batch.items) + len(probes) + len(own or {}),
            "model_calls": judge_backend.calls + (policy.calls if policy else 0),
            "cache_hits": judge_backend.hits + (policy.hits if policy else 0),
            "seconds": round(time.time() - started, 1), "versions": package_versions()}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    write_json(out / "meta.json", meta)
    write_html(out / "report.html", report, meta)
    return {"report": report, "meta": meta}


def _pairs(got: dict, group: str, other: str = "base") -> list[tuple[F.Target, F.Target]]:
    return [(got[other][k], t) for k, t in got.get(group, {}).items()]


def assemble(got: dict, own: dict | None, self_note: str) -> dict:
    base = list(got["base"].values())
    # Base pairs whose lengths differ by more than 30 characters, targeting the longer answer;
    # `worse` marks those where the longer one is the known worse answer.
    longer, longer_worse = [], []
    for t in base:
        a, b = len(t.item.a), len(t.item.b)
        if abs(a - b) > 30:
            longer.append(F.Target(t.verdict, a > b, t.item))
            if (a > b) != t.a_is_target:
                longer_worse.append(longer[-1])
    position = F.position([t.verdict for t in base])
    length = {
        "prefers_longer": F.both_modes(F.prefers, longer),
        "prefers_longer_when_longer_is_worse": F.both_modes(F.prefers, longer_worse),
        "prefers_padded_copy": F.both_modes(F.prefers, list(got["padded_same"].values())),
        # Change in P(better wins) when only the worse answer is padded; negative = padding pays.
        "padding_shift": F.both_modes(F.shift, _pairs(got, "padded_worse")),
    }
    fmt = {"prefers_list": F.both_modes(F.prefers, list(got.get("format", {}).values()))}
    perturb = {"noise_floor": F.both_modes(F.agreement, _pairs(got, "noise"))}
    for name in PERTURBATIONS:
        perturb[name] = F.both_modes(F.agreement, _pairs(got, f"perturbed:{name}"))
    calibration = F.both_modes(F.calibration, base)
    r, m = "raw", "mitigated"
    report = {
        "position": {"measured": True, **position, "summary": (
            f"orders agree {F.fmt(position[r]['consistency'])}; first-shown picked "
            f"{F.fmt(position[r]['primacy_share'])}; swap-and-average makes labels order-invariant")},
        "length": {"measured": True, **length, "summary": (
            f"prefers the longer answer {F.fmt(length['prefers_longer'][r])} raw, "
            f"{F.fmt(length['prefers_longer'][m])} mitigated; padding shift {F.fmt(length['padding_shift'][m])}")},
        "format": {"measured": bool(got.get("format")), **fmt, "summary": (
            f"prefers the bulleted copy {F.fmt(fmt['prefers_list'][r])} raw, {F.fmt(fmt['prefers_list'][m])} mitigated")},
        "self_preference": {"measured": own is not None, "note": self_note, "summary": self_note},
        "perturbations": {"measured": True, **perturb, "summary": "robustness (same verdict) mitigated: " + "; ".join(
            f"{k} {F.fmt(v[m])}" for k, v in perturb.items())},
        "calibration": {"measured": True, **calibration, "summary": (
            f"accuracy {F.fmt(calibration[r]['accuracy'])} raw, {F.fmt(calibration[m]['accuracy'])} mitigated; "
            f"ECE {F.fmt(calibration[m]['ece'])}; Brier {F.fmt(calibration[m]['brier'])}")},
    }
    if own is not None:
        own_pref = F.both_modes(F.prefers, list(own.values()))
        report["self_preference"].update(prefers_own=own_pref, summary=(
            f"prefers its own answers {F.fmt(own_pref[r])} raw, {F.fmt(own_pref[m])} mitigated ({self_note}); "
            "answer quality is not controlled"))
    assert tuple(report) == SECTIONS
    return report
