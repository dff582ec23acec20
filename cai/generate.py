"""The `cai generate` job: check every input, run the engine, derive the dataset, write run.json.

All inputs (pipeline, constitution, prompts, model) are checked before the run
directory is touched, so a bad input leaves nothing behind.
"""

from __future__ import annotations

import importlib.util
import time

from cai import __version__, batch_files, dataset, usage
from cai import versions as dataset_versions
from cai.backends import auto
from cai.backends.context import overlong_prompts
from cai.backends.loading import LazyBackend, close
from cai.config import PipelineConfig
from cai.constitution import load_constitution
from cai.engine import Engine
from cai.judge import judge_method
from cai.errors import InputError, Problem
from cai.progress import StageProgress
from cai.review.decisions import Review, review_warnings
from cai.prompts import load_prompts
from cai.rundir import check_out, lock
from cai.runfiles import package_versions, write_json


def check_inputs(config: PipelineConfig):
    """Constitution and prompts, validated together so the user sees every problem at once; `auto`
    backends settled for the job's size (the notes say what they chose)."""
    problems: list[Problem] = []
    constitution = examples = None
    try:
        constitution = load_constitution(config.constitution)
        if not constitution.critique_principles:
            problems.append(Problem(config.constitution, None, "principles",
                                    "no principle has critique and revision requests; SL-CAI needs at least one"))
        if config.feedback.enabled and not constitution.comparison_principles:
            problems.append(Problem(config.constitution, None, "principles",
                                    "no principle has a comparison question; AI feedback (--feedback) needs at least one"))
    except InputError as exc:
        problems += exc.problems
    try:
        examples = load_prompts(config.prompts, config.limit, config.holdout)
    except InputError as exc:
        problems += exc.problems
    notes = settle_backends(config, len(examples or ()), sum(bool(e.get("kept")) for e in examples or ()))
    problems += overlong_prompts(config, examples)  # each prompt must fit the policy model whole
    if config.max_cost and not usage.prices(config):
        problems.append(Problem("--max-cost", None, "", "no model has a price: set options.price "
                                "{input_per_mtok, output_per_mtok} (USD per million tokens) on the policy or judge"))
    batch = [s for s in (config.policy, config.judge) if s is not None and getattr(s.options, "batch", False)]
    if batch and config.engine == "ray":
        problems.append(Problem("engine", None, "", "batch endpoints (options.batch) run from one machine: "
                                "use engine local (a batch already runs at the provider's scale)"))
    if batch and "chunk_size" not in config.model_fields_set:
        config.chunk_size = BATCH_CHUNK  # one batch per stage step as long as the provider allows
    if config.engine == "ray" and importlib.util.find_spec("ray") is None:
        problems.append(Problem("engine", None, "", "engine ray needs Ray: pip install 'cai-engine[ray]'"))
    if problems:
        raise InputError(problems)
    return constitution, examples, notes


def settle_backends(config: PipelineConfig, n_prompts: int, n_kept: int = 0) -> list[str]:
    """Replace `backend: auto` specs by the backend they choose for this job (kept per run folder)."""
    revised = n_prompts - n_kept  # kept prompts are answered once, never critiqued or judged
    calls = n_kept + revised * (1 + 2 * config.rounds)
    if config.feedback.enabled:  # both orders per principle, at least one pair per prompt
        calls += 2 * revised * config.feedback.principles
    out, notes = config.resolved_out(), []
    for role, key in (("policy", "model"), ("judge", "judge")):
        spec = getattr(config, role)
        if spec is not None and spec.backend == "auto":
            spec, note = auto.resolve(spec, calls, out, key)
            setattr(config, role, spec)
            notes.append(f"{role}: {note}" if role == "judge" else note)
    return notes


def generate(config: PipelineConfig, pipeline_path: str | None = None, backend=None,
             progress: StageProgress | None = None, judge=None, export_to=None) -> dict:
    """Run (or resume) a pipeline; return the summary also written to run.json.

    `backend`/`judge` are used as given (and left open); otherwise made from the config's specs,
    loaded only when a call misses the cache, and closed. The judge is the policy's backend
    when its spec has the policy's identity.
    """
    started = time.time()
    check_out(config.resolved_out())  # first: it is instant, and counting prompts resolves the model
    if export_to is not None:  # the calls go to a batch file instead of a model (cai/batch_files.py)
        batch_files.needs_openai(config)
        export_to, exported = batch_files.check_folder(export_to), []
        backend = batch_files.Exporter(config.policy, "policy", exported)
        if config.feedback.enabled and not config.judge_is_policy():
            judge = batch_files.Exporter(config.judge, "judge", exported)
    constitution, examples, notes = check_inputs(config)
    for note in notes if progress is not None else ():
        progress.say(note)
    owned = []
    try:
        if backend is None:
            backend = LazyBackend(config.policy)
            owned.append(backend)
        if judge is None and config.feedback.enabled and not config.judge_is_policy():
            judge = LazyBackend(config.judge, "--judge-model")
            owned.append(judge)
        for b in owned:  # batch ids live in the run folder (re-attached by a rerun)
            if hasattr(b, "use_run_dir"):
                b.use_run_dir(config.resolved_out())
        # One writer per run folder: a second generate on it gets exit 2.
        with lock(config.resolved_out()):
            summary = _run(config, pipeline_path, backend, constitution, examples, progress, started, judge, notes)
            if export_to is not None:
                path = batch_files.write_requests(export_to, exported)
                summary["exported"] = {"requests": len(exported), "path": str(path)}
                write_json(config.resolved_out() / "run.json", summary)
            return summary
    finally:
        close(*owned)


def make_engine(config: PipelineConfig, constitution, backend, out, progress, judge):
    if config.engine == "ray":
        from cai.ray_engine import RayEngine

        return RayEngine(config, constitution, backend, out, progress, judge=judge)
    return Engine(config, constitution, backend, out, progress, judge=judge)


def _judge_info(config: PipelineConfig, backend, judge) -> tuple[dict | None, list[str]]:
    if not config.feedback.enabled:
        return None, []
    j = config.judge_spec()
    same = judge is None or judge.identity == backend.identity
    method = judge_method(config)
    info = {"backend": j.backend, "spec": j.model, "identity": (judge or backend).identity,
            "same_as_policy": same, "method": method,  # logprobs (soft labels) or votes (vote shares)
            **({"votes": config.feedback.votes} if method == "votes" else {})}
    warn = ["the judge is the policy model itself: its labels may favour its own style "
            "(self-preference); set judge: in the pipeline (or --judge-model) to use another model"] if same else []
    return info, warn


def _run(config, pipeline_path, backend, constitution, examples, progress, started, judge=None,
         notes=()) -> dict:
    out = config.resolved_out()
    engine = make_engine(config, constitution, backend, out, progress, judge)
    judge_info, warnings = _judge_info(config, backend, judge)
    warnings += _unsent_penalty(config)
    summary = {
        "cai_version": __version__, "status": "running", "started": started,
        "pipeline_path": pipeline_path, "config": config.model_dump(mode="json"),
        "constitution_path": config.constitution, "constitution_sha256": constitution.sha256,
        "constitution": {"path": config.constitution, "name": constitution.name,
                         "version": constitution.version, "sha256": constitution.sha256},
        "model": {"backend": config.policy.backend, "spec": config.policy.model, "identity": backend.identity,
                  "chosen_by": next((n for n in notes if n.startswith("backend auto")), None)},
        "judge": judge_info, "warnings": warnings,
        "fingerprint": engine.fingerprint, "versions": package_versions(), "engine": {"kind": config.engine},
    }
    damaged_versions = dataset_versions.quarantine(out)
    write_json(out / "run.json", summary)
    priced, estimate = usage.prices(config), _estimate(config, constitution, examples)
    if config.token_budget or config.max_cost:
        engine.budget = usage.Budget(config.token_budget, config.max_cost, priced,
                                     usage.spent_in_cache(engine.cache, priced), estimate)
    try:
        stats = engine.run(examples)
    except BaseException as exc:
        summary.update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                       error=f"{type(exc).__name__}: {exc}", counts=_counts(engine.stats, len(examples)),
                       backend_stats=engine.backend_stats("policy"),
                       **usage.summary(engine.stats.tokens, engine.stats.model_tokens, priced))
        try:
            write_json(out / "run.json", summary)
        except OSError:  # e.g. the disk that failed the run is still full: the first error is the one to report
            pass
        raise
    quarantined = {"records": engine.store.quarantined, "versions": damaged_versions}
    warnings += _quarantine_warnings(quarantined)
    built = dataset.build(engine.current_records(examples), out, config.test_size,
                          config.feedback if config.feedback.enabled else None, Review.of(out))
    warnings += review_warnings(built.get("review"))
    # Keep this build as versions/<sha12> too, so an earlier constitution's dataset survives an edit.
    dataset_versions.snapshot(out, constitution, engine.current_records(examples), built)
    summary.update(
        status="stopped" if stats.stopped else "incomplete" if stats.failed else "complete", finished=time.time(),
        stopped=stats.stopped,
        counts={**_counts(stats, len(examples)), **built},
        backend_stats=engine.backend_stats("policy"),
        judge_backend_stats=engine.backend_stats("judge") if judge is not None else None,
        timings={"total_seconds": round(time.time() - started, 3),
                 # Models load lazily, on the first call that misses the cache (0 when none did).
                 "load_seconds": round(engine.load_seconds, 3),
                 "stages": {k: round(v, 3) for k, v in stats.stage_seconds.items()}},
        # Paths inside the run folder are written relative to it.
        dataset_path="dataset", sft_path="sft", quarantined=quarantined,
        engine=getattr(engine, "info", {"kind": "local"}),
    )
    summary["counts"]["quarantined"] = sum(map(len, quarantined.values()))
    summary.update(usage.summary(stats.tokens, stats.model_tokens, priced))
    if estimate is not None:  # --plan's estimate of this run, beside what it spent
        summary["tokens"].update(estimate=estimate, actual_over_estimate=usage.accuracy(
            estimate, summary["tokens"]["total"]))
    write_json(out / "run.json", summary)
    return summary


BATCH_CHUNK = 50_000  # a batch file's request limit
ESTIMATE_LIMIT = 20_000  # prompts up to which a run plays its plan first (about 8 s at 20k) to estimate tokens


def _estimate(config: PipelineConfig, constitution, examples: list[dict]) -> dict | None:
    from cai import plan

    if len(examples) > ESTIMATE_LIMIT:
        return None
    planned = plan.play(config, constitution, examples)
    return {**planned["tokens"]["total"], **({"usd": planned["cost"]["usd"]} if "cost" in planned else {}),
            "prompts": planned["records_rebuilt"]}


def _unsent_penalty(config: PipelineConfig) -> list[str]:
    """An API policy that cannot be sent the stages' repetition penalty behaves unlike in-process."""
    penalties = sorted({s.repetition_penalty for s in vars(config.sampling).values()
                        if getattr(s, "repetition_penalty", 1.0) != 1.0})
    if config.policy.backend != "openai" or config.policy.options.repetition_penalty_field or not penalties:
        return []
    return [f"the stages' repetition_penalty ({', '.join(map(str, penalties))}) is not sent to the openai backend "
            "(the OpenAI API has no such field): revisions may copy their critique. For a server that takes one, "
            "set policy.options.repetition_penalty_field (vLLM, TGI, SGLang: repetition_penalty)"]


def _quarantine_warnings(quarantined: dict) -> list[str]:
    lines = [f"records/{q['shard']} line {q['line']} is damaged ({q['error']}): the shard was moved to "
             f"{q['moved_to']} and its examples recomputed" for q in quarantined["records"]]
    lines += [f"{q['error']}: moved to {q['moved_to']}" for q in quarantined["versions"]]
    return lines


def _counts(stats, n_prompts: int) -> dict:
    return {"prompts": n_prompts, "model_calls": stats.model_calls, "cache_hits": stats.cache_hits,
            "judge_calls": stats.judge_calls,
            "resumed": stats.resumed, "generated": stats.generated, "failed": stats.failed,
            "failed_calls": stats.failed_calls, "errors": stats.errors}
