"""The `cai generate` job: check every input, run the engine, derive the dataset, write run.json.

All inputs (pipeline, constitution, prompts, model) are checked before the run
directory is touched, so a bad input leaves nothing behind.
"""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path

from cai import __version__, backends, dataset
from cai import versions as dataset_versions
from cai.config import PipelineConfig
from cai.constitution import load_constitution
from cai.engine import Engine
from cai.errors import InputError, Problem
from cai.progress import StageProgress
from cai.prompts import load_prompts
from cai.records import write_text_atomic
from cai.redact import scrub_run

_PACKAGES = ("torch", "transformers", "datasets", "trl", "pydantic", "pyarrow")


def versions() -> dict:
    found = {"python": platform.python_version(), "cai": __version__}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def write_json(path: Path, data: dict) -> None:
    # Defensive: a key pasted into the pipeline (extra_body, ...) never lands in run.json.
    write_text_atomic(path, json.dumps(scrub_run(data), indent=2, ensure_ascii=False) + "\n")


def check_inputs(config: PipelineConfig):
    """Constitution and prompts, validated together so the user sees every problem at once."""
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
        examples = load_prompts(config.prompts, config.limit)
    except InputError as exc:
        problems += exc.problems
    if problems:
        raise InputError(problems)
    return constitution, examples


def backend_options(config: PipelineConfig) -> tuple[str, dict]:
    """The backend's registry name and constructor options, from the config."""
    options: dict = {"model": config.model}
    if config.backend == "transformers":
        options.update(batch_size=config.batch_size, dtype=config.dtype)
    if config.backend == "vllm":
        options.update(dtype=config.dtype, tensor_parallel_size=config.tensor_parallel_size,
                       data_parallel_size=config.data_parallel_size,
                       gpu_memory_utilization=config.gpu_memory_utilization,
                       max_model_len=config.max_model_len)
    if config.backend == "openai":
        if config.model == "embedded":
            raise InputError([Problem("--model", None, "", "name the model the server serves (the openai backend has no embedded model)")])
        options.update(base_url=config.base_url, api_key_env=config.api_key_env,
                       concurrency=config.concurrency, timeout=config.timeout,
                       extra_body=config.extra_body)
    return config.backend, options


def _bad_model(config: PipelineConfig, exc: BaseException) -> InputError:
    """A model path or id that cannot be resolved or loaded is bad input, not a crash."""
    return InputError([Problem("--model", None, "", f"{config.model}: {exc}".splitlines()[0])])


def backend_identity(config: PipelineConfig) -> str:
    """The identity load_backend's backend would have, without loading it."""
    from cai.models import ModelNotFound

    name, options = backend_options(config)
    try:
        return backends.identity(name, **options)
    except (ModelNotFound, OSError) as exc:
        raise _bad_model(config, exc) from None


def load_backend(config: PipelineConfig):
    from cai.models import ModelNotFound

    name, options = backend_options(config)
    from cai.backends.openai_api import MissingAPIKey, UnknownModel

    try:
        return backends.create(name, **options)
    except (ModelNotFound, UnknownModel) as exc:
        raise _bad_model(config, exc) from None
    except backends.BackendUnavailable as exc:
        raise InputError([Problem("backend", None, "", str(exc))]) from None
    except MissingAPIKey as exc:
        raise InputError([Problem("api_key_env", None, "", str(exc))]) from None
    except ConnectionError as exc:
        raise RuntimeError(str(exc).splitlines()[0]) from None
    except OSError as exc:
        raise _bad_model(config, exc) from None


def close(*owned) -> None:
    # Backends with worker processes (vLLM) must stop them before the interpreter exits.
    for b in owned:
        if b is not None and hasattr(b, "close"):
            b.close()


def load_judge(config: PipelineConfig):
    """The judge's backend, or None when it is the policy's model (then the policy backend serves)."""
    return None if config.judge_is_policy() else load_backend(config.judge_config())


def generate(config: PipelineConfig, pipeline_path: str | None = None, backend=None,
             progress: StageProgress | None = None, judge=None) -> dict:
    """Run (or resume) a pipeline; return the summary also written to run.json.

    `backend`/`judge` are used as given (and left open); otherwise loaded from the config and closed.
    """
    started = time.time()
    constitution, examples = check_inputs(config)
    owned = []
    try:
        if backend is None:
            backend = load_backend(config)
            owned.append(backend)
        if judge is None and config.feedback.enabled:
            judge = load_judge(config)
            owned.append(judge)
        return _run(config, pipeline_path, backend, constitution, examples, progress, started, judge)
    finally:
        close(*owned)


def _judge_info(config: PipelineConfig, backend, judge) -> tuple[dict | None, list[str]]:
    if not config.feedback.enabled:
        return None, []
    j = config.judge_config()
    same = judge is None or judge.identity == backend.identity
    info = {"backend": j.backend, "spec": j.model, "identity": (judge or backend).identity,
            "same_as_policy": same}
    warn = ["the judge is the policy model itself: its labels may favour its own style "
            "(self-preference); set judge: in the pipeline (or --judge-model) to use another model"] if same else []
    return info, warn


def _run(config, pipeline_path, backend, constitution, examples, progress, started, judge=None) -> dict:
    load_seconds = time.time() - started
    out = config.resolved_out()
    engine = Engine(config, constitution, backend, out, progress, judge_backend=judge)
    judge_info, warnings = _judge_info(config, backend, judge)
    summary = {
        "cai_version": __version__, "status": "running", "started": started,
        "pipeline_path": pipeline_path, "config": config.model_dump(mode="json"),
        "constitution_path": config.constitution, "constitution_sha256": constitution.sha256,
        "constitution": {"path": config.constitution, "name": constitution.name,
                         "version": constitution.version, "sha256": constitution.sha256},
        "model": {"backend": config.backend, "spec": config.model, "identity": backend.identity},
        "judge": judge_info, "warnings": warnings,
        "fingerprint": engine.fingerprint, "versions": versions(),
    }
    write_json(out / "run.json", summary)
    try:
        stats = engine.run(examples)
    except BaseException as exc:
        summary.update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                       error=f"{type(exc).__name__}: {exc}", counts=_counts(engine.stats, len(examples)),
                       backend_stats=dict(getattr(backend, "stats", {})))
        write_json(out / "run.json", summary)
        raise
    built = dataset.build(engine.current_records(examples), out, config.test_size,
                          config.feedback if config.feedback.enabled else None)
    # Keep this build as versions/<sha12> too, so an earlier constitution's dataset survives an edit.
    dataset_versions.snapshot(out, constitution, engine.current_records(examples), built)
    summary.update(
        status="incomplete" if stats.failed else "complete", finished=time.time(),
        counts={**_counts(stats, len(examples)), **built},
        backend_stats=dict(getattr(backend, "stats", {})),
        judge_backend_stats=dict(getattr(judge, "stats", {})) if judge is not None else None,
        timings={"total_seconds": round(time.time() - started, 3),
                 "load_seconds": round(load_seconds, 3),
                 "stages": {k: round(v, 3) for k, v in stats.stage_seconds.items()}},
        dataset_path=str(out / "dataset"), sft_path=str(out / "sft"),
    )
    write_json(out / "run.json", summary)
    return summary


def _counts(stats, n_prompts: int) -> dict:
    return {"prompts": n_prompts, "model_calls": stats.model_calls, "cache_hits": stats.cache_hits,
            "judge_calls": stats.judge_calls,
            "resumed": stats.resumed, "generated": stats.generated, "failed": stats.failed,
            "failed_calls": stats.failed_calls, "errors": stats.errors}


def describe(summary: dict) -> list[tuple[str, str]]:
    """The run's outcome as (kind, line) pairs for the console; kind is info, warning or error."""
    c = summary["counts"]
    flagged = ", ".join(f"{k} {v}" for k, v in c["flagged"].items()) or "none"
    lines = [("info", f"{c['records']} records, {c['pairs']} pairs (flagged: {flagged}); "
                      f"{c['model_calls']} model calls, {c['cache_hits']} cache hits, {c['resumed']} resumed")]
    if "comparisons" in c:
        lines.append(("info", f"AI feedback: {c['comparisons']} judged pairs, {c['ties']} ties, {c['low_confidence']} "
                              f"below min_confidence, {c['unusable']} unusable ({c['judge_malformed']} malformed judge "
                              f"outputs); {c['position_consistent']} consistent across both orders"))
    lines += [("warning", w) for w in summary.get("warnings", [])]
    if not c["pairs"]:
        lines.append(("warning", "no pairs passed the quality gates; see records/ for the reasons"))
    if c["failed"]:
        first = c["errors"][0]
        lines.append(("error", f"{c['failed']} prompts failed and are left for the next run (first: {first['id']} at "
                               f"{first['stage']}: {first['error']}); run the same command again to retry them"))
    return lines
