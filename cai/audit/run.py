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
from cai.backends import CallFailed, Sampling
from cai.cache import Cache, call_key
from cai.config import PipelineConfig, PromptSource
from cai.constitution import load_constitution
from cai.errors import InputError, Problem
from cai.feedback import Comparison, Judge
from cai.generate import close, load_backend, versions, write_json
from cai.prompts import load_prompts

SECTIONS = ("position", "length", "format", "self_preference", "perturbations", "calibration")
SELF_PREFERENCE_PROMPTS = 16
CHUNK = 64  # calls per cache commit: what an interrupt can lose


class _CachedCalls:
    """The backend's chat/choice_logprobs through the call cache, under the same keys `cai generate` uses."""

    def __init__(self, cache: Cache):
        self.cache, self.calls, self.hits = cache, 0, 0

    def _through(self, backend, keys: list[str], width: int, compute, progress=None) -> list:
        found = self.cache.get_many(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(keys) - len(missing)
        if progress:
            progress((len(keys) - len(missing)) * width)
        for start in range(0, len(missing), CHUNK):
            part = missing[start:start + CHUNK]
            new = {keys[i]: out for i, out in zip(part, compute(part, progress))}
            self.calls += len(part)
            # Failures are returned but not stored, so the next run retries them.
            self.cache.put_many((k, backend.identity, v) for k, v in new.items() if not isinstance(v, CallFailed))
            found.update(new)
        return [found[k] for k in keys]

    def chat(self, backend, convs: list, sampling: list[Sampling], progress=None) -> list:
        keys = [call_key(backend.identity, "chat", c, s.key()) for c, s in zip(convs, sampling)]
        return self._through(backend, keys, 1, lambda part, prog: backend.chat(
            [convs[i] for i in part], [sampling[i] for i in part], progress=prog), progress)

    def scorer(self, backend, progress=None):
        """A `score` function for Judge.compare."""
        def score(stage, convs, ids, choices):
            keys = [call_key(backend.identity, "choices", c, {"choices": list(choices)}) for c in convs]
            return self._through(backend, keys, len(choices), lambda part, prog: backend.choice_logprobs(
                [convs[i] for i in part], choices, progress=prog), progress)
        return score


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

    def judge(self, judge: Judge, calls: _CachedCalls, progress=None) -> dict[str, dict[str, F.Target]]:
        out: dict[str, dict[str, F.Target]] = {}
        verdicts = judge.compare(self.items, progress=progress, score=calls.scorer(judge.backend, progress),
                                 chat=lambda stage, convs, ids: calls.chat(
                                     judge.backend, convs, [judge.cot_sampling] * len(convs), progress))
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


def _self_preference(config: PipelineConfig, judge_backend, limit: int | None,
                     calls: _CachedCalls) -> tuple[_Batch | None, str]:
    if config.judge_is_policy():
        return None, ("not measured: the judge is the policy model, so there is no second model's answers to "
                      "compare with; configure judge: (or --judge-model) with a different model")
    prompts = load_prompts([PromptSource(path=s.path, field=s.field) for s in config.prompts],
                           min(limit or SELF_PREFERENCE_PROMPTS, SELF_PREFERENCE_PROMPTS))
    policy = load_backend(config)
    try:
        s = config.sampling.respond
        sampling = [Sampling(**s.model_dump())] * len(prompts)
        convs = [[{"role": "user", "content": ex["prompt"]}] for ex in prompts]
        other = calls.chat(policy, convs, sampling)
        own = calls.chat(judge_backend, convs, sampling)
    finally:
        close(policy)
    batch = _Batch()
    for ex, mine, theirs in zip(prompts, own, other):
        if isinstance(mine, str) and isinstance(theirs, str) and mine.strip() != theirs.strip():
            batch.add("self", ex["id"], f"self:{ex['id']}", ex["prompt"], mine, theirs)
    return batch, f"own answers ({judge_backend.identity}) vs the policy's ({policy.identity})"


def run_audit(config: PipelineConfig, out: Path, limit: int | None = None, progress=None, judge_backend=None) -> dict:
    started = time.time()
    constitution = load_constitution(config.constitution)
    if not constitution.comparison_principles:
        raise InputError([Problem(config.constitution, None, "principles",
                                  "no principle has a comparison question; the audit judges with them")])
    probes = load_probes(limit)
    owned = judge_backend is None
    judge_backend = judge_backend or load_backend(config.judge_config())
    calls = _CachedCalls(Cache(out / "cache.sqlite", enabled=config.cache))
    try:
        k = max(config.feedback.principles, 2)
        judge = Judge(judge_backend, constitution, principles=k, seed=config.seed)
        # A fresh principle draw: the noise floor the perturbation figures are read against.
        noise_judge = Judge(judge_backend, constitution, principles=k, seed=config.seed + 1)
        probe_batch = _probe_batch(probes)
        self_batch, self_note = _self_preference(config, judge_backend, limit, calls)
        total = (len(probe_batch.items) + len(probes) + (len(self_batch.items) if self_batch else 0)) * judge.k * 4
        tick = None
        if progress:
            progress.add("judge", total)
            tick = lambda n: progress.advance("judge", n)  # noqa: E731
        got = probe_batch.judge(judge, calls, tick)
        noise = _Batch()
        for p in probes:
            noise.add("base", p.id, p.id, p.prompt, p.better, p.worse)
        got["noise"] = noise.judge(noise_judge, calls, tick)["base"]
        own = self_batch.judge(judge, calls, tick).get("self", {}) if self_batch else None
    finally:
        calls.cache.close()
        if owned:
            close(judge_backend)
    report = assemble(got, own, self_note)
    meta = {"judge": {"identity": judge_backend.identity, "backend": config.judge_config().backend,
                      "principles_per_comparison": judge.k, "seed": config.seed},
            "constitution": {"path": config.constitution, "name": constitution.name, "sha256": constitution.sha256},
            "probes": len(probes), "comparisons": len(probe_batch.items) + len(probes) + len(own or {}),
            "model_calls": calls.calls, "cache_hits": calls.hits,
            "seconds": round(time.time() - started, 1), "versions": versions()}
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
