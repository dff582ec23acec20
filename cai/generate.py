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
    except InputError as exc:
        problems += exc.problems
    try:
        examples = load_prompts(config.prompts, config.limit)
    except InputError as exc:
        problems += exc.problems
    if problems:
        raise InputError(problems)
    return constitution, examples


def load_backend(config: PipelineConfig, **options):
    from cai.models import ModelNotFound

    options = {"model": config.model, **options}
    if config.backend == "transformers":
        options.setdefault("batch_size", config.batch_size)
        options.setdefault("dtype", config.dtype)
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
    from cai.backends.openai_api import MissingAPIKey, UnknownModel

    try:
        return backends.create(config.backend, **options)
    except (ModelNotFound, UnknownModel) as exc:
        # A model path or id that cannot be loaded is bad input, not a crash.
        raise InputError([Problem("--model", None, "", f"{config.model}: {exc}".splitlines()[0])]) from None
    except backends.BackendUnavailable as exc:
        raise InputError([Problem("backend", None, "", str(exc))]) from None
    except MissingAPIKey as exc:
        raise InputError([Problem("api_key_env", None, "", str(exc))]) from None
    except ConnectionError as exc:
        raise RuntimeError(str(exc).splitlines()[0]) from None
    except OSError as exc:
        raise InputError([Problem("--model", None, "", f"{config.model}: {exc}".splitlines()[0])]) from None


def generate(config: PipelineConfig, pipeline_path: str | None = None, backend=None,
             progress: StageProgress | None = None) -> dict:
    """Run (or resume) a pipeline; return the summary also written to run.json."""
    started = time.time()
    constitution, examples = check_inputs(config)
    owned = backend is None
    if owned:
        backend = load_backend(config)
    try:
        return _run(config, pipeline_path, backend, constitution, examples, progress, started)
    finally:
        # Backends with worker processes (vLLM) must stop them before the interpreter exits.
        if owned and hasattr(backend, "close"):
            backend.close()


def _run(config, pipeline_path, backend, constitution, examples, progress, started) -> dict:
    load_seconds = time.time() - started
    out = config.resolved_out()
    engine = Engine(config, constitution, backend, out, progress)
    summary = {
        "cai_version": __version__, "status": "running", "started": started,
        "pipeline_path": pipeline_path, "config": config.model_dump(mode="json"),
        "constitution_path": config.constitution, "constitution_sha256": constitution.sha256,
        "constitution": {"path": config.constitution, "name": constitution.name,
                         "version": constitution.version, "sha256": constitution.sha256},
        "model": {"backend": config.backend, "spec": config.model, "identity": backend.identity},
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
    built = dataset.build(engine.current_records(examples), out, config.test_size)
    # Keep this build as versions/<sha12> too, so an earlier constitution's dataset survives an edit.
    dataset_versions.snapshot(out, constitution, engine.current_records(examples), built)
    summary.update(
        status="incomplete" if stats.failed else "complete", finished=time.time(),
        counts={**_counts(stats, len(examples)), **built},
        backend_stats=dict(getattr(backend, "stats", {})),
        timings={"total_seconds": round(time.time() - started, 3),
                 "load_seconds": round(load_seconds, 3),
                 "stages": {k: round(v, 3) for k, v in stats.stage_seconds.items()}},
        dataset_path=str(out / "dataset"), sft_path=str(out / "sft"),
    )
    write_json(out / "run.json", summary)
    return summary


def _counts(stats, n_prompts: int) -> dict:
    return {"prompts": n_prompts, "model_calls": stats.model_calls, "cache_hits": stats.cache_hits,
            "resumed": stats.resumed, "generated": stats.generated, "failed": stats.failed,
            "failed_calls": stats.failed_calls, "errors": stats.errors}
