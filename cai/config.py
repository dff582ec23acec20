"""Run configuration: a pipelines/*.yaml file, validated like a constitution, then CLI overrides.

Input paths inside a pipeline file (constitution, prompts) are relative to
that file, so a pipeline runs the same from any working directory. Paths given
as CLI flags, and the output directory (`out`, default outputs/<name>), are
relative to where the user runs the command, as with any CLI that writes files.

The models are ModelSpecs (cai/backends/specs.py): `policy:` answers, critiques
and revises; `judge:` (AI feedback, `cai audit`) follows the policy wherever it
leaves a field unset.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from cai import shipped
from cai.backends.specs import DEFAULT_BACKEND, ModelSpec, _Spec, inherit, model_spec
from cai.errors import InputError
from cai.field_errors import StrictModel as _Strict, pydantic_problems
from cai.yamlio import load_yaml

# Keys that sat at the top of a pipeline before model specs, and where they live now.
MOVED = {"backend": "policy.backend", "model": "policy.model",
         **{k: f"policy.options.{k}" for k in (
             "base_url", "api_key_env", "concurrency", "timeout", "extra_body", "batch_size", "dtype",
             "gpu_memory_utilization", "tensor_parallel_size", "data_parallel_size", "max_model_len")}}

class StageSampling(_Strict):
    max_new_tokens: int = Field(128, gt=0, le=8192)
    temperature: float = Field(0.0, ge=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=3)


class SamplingConfig(_Strict):
    respond: StageSampling = StageSampling(max_new_tokens=160)
    critique: StageSampling = StageSampling(max_new_tokens=96)
    revise: StageSampling = StageSampling(max_new_tokens=160)


class FeedbackConfig(_Strict):
    """RL-CAI AI feedback: a judge compares two answers per sampled principle (soft labels)."""

    enabled: bool = False
    # revision_vs_initial: the SL-CAI pair (H4 recipe); samples: n sampled policy answers
    # judged pairwise (the paper's RL-CAI pairs); both: every pair of either kind.
    pairs: Literal["revision_vs_initial", "samples", "both"] = "revision_vs_initial"
    samples: int = Field(2, ge=2, le=8)  # answers per prompt for `samples`
    sample_sampling: StageSampling = StageSampling(max_new_tokens=128, temperature=0.8, top_p=0.95,
                                                   repetition_penalty=1.1)
    principles: int = Field(2, ge=1, le=16)  # k principles per comparison, averaged (ensemble)
    cot: bool = False  # judge reasons first; probabilities clamped to cot_clamp as in the paper
    # Prefill the judge's reply with "The answer is: (" (in-process backends only). Off: on the shipped
    # probes the embedded judge is more often right asked for a fresh reply (bench/judge_prompts.py).
    prefill: bool = False
    cot_clamp: tuple[float, float] = (0.4, 0.6)
    cot_sampling: StageSampling = StageSampling(max_new_tokens=96, repetition_penalty=1.1)
    # How the judge labels: logprobs (the option letters' probabilities, the paper's soft labels) or
    # votes (k sampled answers per order, the label is the vote share) for judges without
    # log-probabilities. auto: votes when the judge's spec says it has none (openai options.logprobs: false).
    method: Literal["auto", "logprobs", "votes"] = "auto"
    votes: int = Field(5, ge=1, le=64)
    vote_sampling: StageSampling = StageSampling(max_new_tokens=16, temperature=1.0)
    tie_threshold: float = Field(0.02, ge=0, lt=0.5)  # |p - 0.5| below this is a tie
    min_confidence: float = Field(0.5, ge=0.5, le=1)  # pairs with chosen_prob below are dropped
    include_ties: bool = False


class PromptSource(_Strict):
    """A prompt file (.jsonl/.json/.csv/.parquet), a saved dataset folder, or `hf:NAME`."""

    path: str
    split: str = "train"  # for datasets
    field: str = "prompt"  # column holding the prompt text
    category: str | None = None  # used when rows carry none
    # revise: SL-CAI critiques and revises the answers. keep: the initial answer is kept as
    # helpfulness SFT data (no critique, no revision, no pair), as the paper mixes in helpful
    # samples, so that SL-CAI data does not teach refusing benign requests.
    mode: Literal["revise", "keep"] = "revise"


class RayConfig(_Strict):
    """`engine: ray` (cai/ray_engine.py): where the cluster is and how work is placed on it."""

    # auto: the running cluster (RAY_ADDRESS, else the one `ray start` made on this machine);
    # local: start a private one-machine cluster; HOST:PORT or ray://HOST:PORT: that cluster.
    address: str = Field("auto", pattern=r"^(auto|local|ray://[^\s/]+|[^\s/:]+:\d+)$")
    # Actors, each holding its own backends. Unset: one per node; with vLLM on GPUs, one per
    # tensor_parallel_size x data_parallel_size GPUs.
    workers: int | None = Field(None, gt=0, le=4096)
    cpus_per_worker: float = Field(1.0, gt=0)  # fractional is fine for API clients
    gpus_per_worker: float | None = Field(None, ge=0)  # unset: vLLM's TP x DP when the cluster has GPUs, else 0
    block_size: int | None = Field(None, gt=0)  # examples per task; unset: chunk_size, smaller to keep workers busy
    start_timeout: float = Field(300.0, gt=0)  # seconds for workers to be placed and start


def _moved(cls, value, info):
    raise ValueError(f"moved: write it as {MOVED[info.field_name]}")


# The old keys as fields that always fail: the error then has the key's line and says where it went.
_WithMovedKeys = create_model(
    "_WithMovedKeys", __base__=_Strict,
    __validators__={"moved": field_validator(*MOVED, mode="before")(_moved)},
    **{k: (Any, Field(None, exclude=True, repr=False)) for k in MOVED})


class PipelineConfig(_WithMovedKeys):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str | None = None
    constitution: str
    prompts: list[PromptSource] = Field(min_length=1)
    limit: int | None = Field(None, gt=0)
    # Budgets over the run folder (everything its cache has cost, earlier runs included): the run stops
    # before a chunk that would cross one, keeps what it made, and continues when run with a higher one.
    token_budget: int | None = Field(None, gt=0)  # input + output tokens of every model
    max_cost: float | None = Field(None, gt=0)  # USD, from the models' options.price
    policy: ModelSpec = model_spec()  # answers, critiques and revises
    judge: ModelSpec | None = None  # AI feedback and `cai audit`; None: the policy model judges
    chunk_size: int = Field(256, gt=0)  # examples per stage batch and per record shard
    engine: Literal["local", "ray"] = "local"  # ray: the same stages on a Ray cluster's actors
    ray: RayConfig = RayConfig()
    rounds: int = Field(2, ge=1, le=8)
    few_shot: int | None = Field(None, ge=0)  # few-shot examples shown; null = all
    system_prompt: str | None = None
    seed: int = 0
    test_size: float = Field(0.1, ge=0, lt=1)
    # Share of every prompt source kept out of generation for `cai eval` (by id hash); eval
    # reads the same setting, so the two never overlap. The shipped pipelines hold out 0.3.
    holdout: float = Field(0.0, ge=0, lt=1)
    cache: bool = True
    out: str | None = None
    sampling: SamplingConfig = SamplingConfig()
    feedback: FeedbackConfig = FeedbackConfig()

    @model_validator(mode="before")
    @classmethod
    def _judge_follows_policy(cls, data):
        if isinstance(data, dict) and isinstance(data.get("judge"), dict):
            policy = data.get("policy")
            policy = policy.model_dump() if isinstance(policy, _Spec) else policy
            data = {**data, "judge": inherit(policy if isinstance(policy, dict) else {}, data["judge"])}
        return data

    @field_validator("prompts", mode="before")
    @classmethod
    def _bare_paths(cls, value):
        if isinstance(value, (str, dict)):
            value = [value]
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, str) else v for v in value]
        return value

    def judge_spec(self) -> _Spec:
        return self.judge or self.policy

    def judge_is_policy(self) -> bool:
        """The judge gives the policy's outputs (same identity): one backend serves both."""
        from cai.backends.loading import spec_identity

        return self.judge is None or spec_identity(self.judge, "--judge-model") == spec_identity(self.policy)

    def resolved_out(self) -> Path:
        return Path(self.out) if self.out else Path("outputs") / self.name


def _relative_to(base: Path, path: str) -> str:
    if path.startswith("hf:") or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


# Flags that set a field of a model spec: flag -> (role, field in the spec).
SPEC_FLAGS = {"model": ("policy", "model"), "backend": ("policy", "backend"),
              "base_url": ("policy", "options.base_url"), "batch_size": ("policy", "options.batch_size"),
              "threads": ("policy", "options.threads"), "batch_api": ("policy", "options.batch"),
              "judge_model": ("judge", "model"), "judge_backend": ("judge", "backend"),
              "judge_base_url": ("judge", "options.base_url")}


def _set_spec(data: dict, role: str, field: str, value) -> None:
    spec = dict(data.get(role) or {})
    if field == "backend" and value != spec.get("backend", DEFAULT_BACKEND):
        spec.pop("options", None)  # the file's options were its old backend's
    if field.startswith("options."):
        spec["options"] = {**(spec.get("options") or {}), field.split(".", 1)[1]: value}
    else:
        spec[field] = value
    data[role] = spec


def _flag_problem(problem, config: dict):
    """A re-validation problem named by the flag the user typed, not the config field."""
    for flag, (role, field) in SPEC_FLAGS.items():
        if problem.field == f"{role}.{field}":
            message = problem.message
            if message.startswith("unknown key"):
                backend = (config.get(role) or {}).get("backend", DEFAULT_BACKEND)
                message = f"the {backend} backend has no such option"
            return replace(problem, field="--" + flag.replace("_", "-"), message=message)
    head = problem.field.split(".")[0]
    flag = {"policy": "backend", "judge": "judge_backend", "ray": problem.field.replace(".", "_")}.get(head, head)
    return replace(problem, field="--" + flag.replace("_", "-"))


def load_pipeline(path: str | Path | None = None, **overrides) -> PipelineConfig:
    """Load a pipeline file and apply CLI overrides.

    Without a path: pipelines/default.yaml of the working directory's project,
    else the shipped one. Overrides whose value is None are ignored; `prompts`
    takes a list of paths; model flags (SPEC_FLAGS) set the policy's or judge's spec.
    """
    path = Path(path) if path else shipped.default_pipeline()
    raw, locate = load_yaml(path)
    if not isinstance(raw, dict):
        from cai.errors import Problem
        from cai.field_errors import kind_of

        raise InputError([Problem(str(path), locate(()), "", f"top level must be a mapping, got {kind_of(raw)}")])
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise InputError(pydantic_problems(exc, str(path), locate, PipelineConfig)) from None
    base = path.resolve().parent
    config.constitution = _relative_to(base, config.constitution)
    for source in config.prompts:
        source.path = _relative_to(base, source.path)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if not changes:
        return config
    # Overrides go into the file's own mapping, so a judge left partial there still follows the policy.
    data = copy.deepcopy(raw)
    data["constitution"] = config.constitution
    data["prompts"] = [source.model_dump() for source in config.prompts]
    if "prompts" in changes:
        data["prompts"] = [{"path": p if p.startswith("hf:") else str(Path(p).resolve())}
                           for p in changes.pop("prompts")]
    if "constitution" in changes:
        data["constitution"] = str(Path(changes.pop("constitution")).resolve())
    for flag in ("ray_address", "ray_workers"):  # --ray-address, --ray-workers set ray.address, ray.workers
        if flag in changes:
            data["ray"] = {**(data.get("ray") or {}), flag.removeprefix("ray_"): changes.pop(flag)}
    if "feedback" in changes:  # --feedback/--no-feedback
        data["feedback"] = {**(data.get("feedback") or {}), "enabled": changes.pop("feedback")}
    for flag, (role, field) in SPEC_FLAGS.items():
        if flag in changes:
            _set_spec(data, role, field, changes.pop(flag))
    data.update(changes)
    # Re-validate so a bad flag value (e.g. --rounds 0) gets the same checks as the file.
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = pydantic_problems(exc, "command line", lambda loc: None, PipelineConfig)
        raise InputError([_flag_problem(p, data) for p in problems]) from None
