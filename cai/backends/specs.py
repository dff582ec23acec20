"""Model specs: which backend runs which model, with that backend's own options.

A pipeline's `policy:` and `judge:`, and `cai eval`'s models, are each a
ModelSpec `{backend, model, options}`. Each backend declares its options class
here, where no torch, vLLM or openai import is needed, so a config validates
in milliseconds and an unknown option is an error at its YAML line. The
identity a model's outputs are cached under is computed here, and only here.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, TypeAdapter, field_validator

from cai.field_errors import StrictModel

Dtype = Literal["float32", "bfloat16", "float16"]


class TransformersOptions(StrictModel):
    # Rows decoding together (continuous batching); unset: 16 on CPU, where a step is compute-bound
    # and 16 beat 32 (bench/batching.py), 64 on a GPU.
    batch_size: int | None = Field(None, gt=0, le=4096)
    # torch's intra-op threads; unset: torch's default, one per physical core. Fewer when other
    # work shares the cores (2 threads on 2 busy cores wait on each other).
    threads: int | None = Field(None, gt=0, le=1024)
    dtype: Dtype = "float32"  # bfloat16: faster on CPUs with avx512_bf16
    # Longer prompts are rejected at input check; longer later conversations fail their record.
    max_input_tokens: int = Field(4096, gt=0)


class VLLMOptions(StrictModel):
    dtype: Dtype = "float32"
    # Unset: 0.9 of a GPU; on CPU an explicit KV cache of 1/4 of free RAM (vLLM would read a
    # share as of host RAM and refuse 0.9). Set it to override either.
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    tensor_parallel_size: int = Field(1, gt=0)
    data_parallel_size: int = Field(1, gt=0)
    max_model_len: int = Field(4096, gt=0)


class Price(StrictModel):
    """USD per million tokens, for run.json's cost and --plan's estimate."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    batch_discount: float = Field(0.5, ge=0, lt=1)  # off both prices with options.batch (OpenAI: 50 %)


class OpenAIOptions(StrictModel):
    base_url: str | None = None  # the server's /v1 URL (default: OpenAI's)
    api_key_env: str = "OPENAI_API_KEY"  # the variable holding the key, never the key
    concurrency: int = Field(16, gt=0, le=1024)  # requests in flight
    # A hung request costs timeout x (max_retries + 1): 3 min at these defaults, not 14. Raise
    # timeout for a slow local server (long answers on a CPU, requests queued behind others).
    timeout: float = Field(60.0, gt=0)  # seconds per attempt of a request
    max_retries: int = Field(2, ge=0, le=20)  # on 429, 5xx, timeouts, dropped connections (Retry-After honoured)
    preflight_timeout: float = Field(10.0, gt=0)  # seconds for the model list at start; no retry
    # Server-specific request fields, e.g. {repeat_penalty: 1.0} for llama.cpp or
    # {repetition_penalty: 1.1} for vLLM (the OpenAI API itself rejects unknown fields).
    extra_body: dict = {}
    # The request field that carries each stage's repetition_penalty (the OpenAI API has none):
    # repetition_penalty for vLLM, TGI and SGLang (over prompt and reply, as in-process);
    # repeat_penalty for llama.cpp (over its last 64 tokens only). Unset: not sent.
    repetition_penalty_field: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # The provider's limits, paced so no minute exceeds them (shared by a run's Ray workers).
    rpm: float | None = Field(None, gt=0)  # requests per minute
    tpm: float | None = Field(None, gt=0)  # tokens per minute (prompt + reply)
    # Seconds a request may spend waiting out 429s (after the client's own retries) before it fails.
    rate_limit_wait: float = Field(600.0, ge=0)
    # false for servers that return no log-probabilities (reasoning models, some providers): the
    # judge then votes (feedback.method auto).
    logprobs: bool = True
    # How a judge's votes ask for {"answer": "A"|"B"}: response_format json_schema (OpenAI, vLLM),
    # json_object with a schema (llama-cpp-python's server), or off (the strict parse of the reply remains).
    structured_output: Literal["json_schema", "json_object", "off"] = "json_schema"
    price: Price | None = None  # e.g. {input_per_mtok: 0.15, output_per_mtok: 0.6}
    # The provider's Batch API (half the price, answers within 24 h): each stage step of a chunk is one
    # batch; the run waits, polling every batch_poll_seconds, and re-attaches to batches in flight.
    batch: bool = False
    batch_poll_seconds: float = Field(30.0, gt=0)


class ScriptedOptions(StrictModel):
    pass


class AutoOptions(StrictModel):
    """`backend: auto` (cai/backends/auto.py): vLLM when installed, working and repaid, else transformers."""

    dtype: Dtype = "float32"
    batch_size: int | None = Field(None, gt=0, le=4096)  # used when transformers is chosen
    threads: int | None = Field(None, gt=0, le=1024)  # likewise
    # Planned model calls from which vLLM's start-up (about 60 s on 2 CPU cores) is repaid.
    vllm_min_calls: int = Field(200, ge=0)
    vllm_min_calls_gpu: int = Field(50, ge=0)


OPTIONS = {"auto": AutoOptions, "transformers": TransformersOptions, "vllm": VLLMOptions,
           "openai": OpenAIOptions, "scripted": ScriptedOptions}
DEFAULT_BACKEND = "auto"
_OPTION_NAMES = sorted({name for cls in OPTIONS.values() for name in cls.model_fields})


def identity(name: str, model: str | None = None, dtype: str = "float32", extra_body: dict | None = None,
             repetition_penalty_field: str | None = None, structured_output: str = "json_schema", **_) -> str:
    """What a backend's outputs depend on, known without loading it (cache keys, provenance, --plan).

    Kept byte-identical across releases: existing caches and run folders are keyed on it.
    """
    if name == "openai":
        # The served weights are the server's business; sampling fields sent with each request are ours.
        # Secrets in extra_body are masked (cai.redact.masked): an identity is written everywhere.
        from cai.redact import masked

        return (f"api:{model}" + (f"|{json.dumps(masked(extra_body), sort_keys=True)}" if extra_body else "")
                + (f"|penalty:{repetition_penalty_field}" if repetition_penalty_field else "")
                + ("" if structured_output == "json_schema" else f"|schema:{structured_output}"))
    if name == "scripted":
        return f"scripted:{model or 'echo'}"
    from cai import models

    ref = models.resolve(model)
    if name == "vllm":  # numerics differ from transformers', so its answers are cached apart
        return f"{ref.identity}|vllm|{dtype}"
    return ref.identity if dtype == "float32" else f"{ref.identity}|{dtype}"


class _Spec(StrictModel):
    backend: str
    model: str = "embedded"
    options: StrictModel

    # Settings that sat beside `backend`/`model` before model specs: named, not "unknown".
    @field_validator(*_OPTION_NAMES, mode="before", check_fields=False)
    @classmethod
    def _moved(cls, value, info):
        raise ValueError(f"moved: model settings go under options (options.{info.field_name})")

    def constructor_options(self) -> dict:
        """Keyword arguments for the backend class."""
        return {"model": self.model, **self.options.model_dump()}

    def identity(self) -> str:
        if self.backend == "auto":  # what it resolves to with the job size unknown (eval, audit)
            from cai.backends.auto import resolve

            return resolve(self)[0].identity()
        return identity(self.backend, **self.constructor_options())



def _moved_fields() -> dict:
    return {name: (Any, Field(None, exclude=True, repr=False)) for name in _OPTION_NAMES}


def _spec_class(name: str, options: type[StrictModel]) -> type[_Spec]:
    from pydantic import create_model

    return create_model(f"{options.__name__.removesuffix('Options')}Spec", __base__=_Spec,
                        backend=(Literal[name], name), options=(options, options()), **_moved_fields())


SPECS = {name: _spec_class(name, cls) for name, cls in OPTIONS.items()}
globals().update({cls.__name__: cls for cls in SPECS.values()})  # importable by name, so specs pickle


def _backend_of(value) -> str | None:
    if isinstance(value, dict):
        return value.get("backend", DEFAULT_BACKEND)
    return getattr(value, "backend", None)


ModelSpec = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in SPECS.items())],  # noqa: UP007
    Discriminator(_backend_of, custom_error_type="unknown_backend",
                  custom_error_message=f"unknown backend (one of {', '.join(OPTIONS)})"),
]
_ADAPTER = TypeAdapter(ModelSpec)


def model_spec(data: dict | None = None, **fields) -> _Spec:
    """A validated ModelSpec from a mapping, e.g. model_spec(backend="scripted", model="echo")."""
    return _ADAPTER.validate_python({**(data or {}), **fields})


def inherit(policy: dict, judge: dict) -> dict:
    """The judge's spec with its unset fields following the policy's (same backend: same model and options)."""
    backend = judge.get("backend") or policy.get("backend", DEFAULT_BACKEND)
    same = backend == policy.get("backend", DEFAULT_BACKEND)
    out = {"backend": backend, "model": judge.get("model") or (policy.get("model", "embedded") if same else "embedded")}
    options = {**(policy.get("options") or {}), **(judge.get("options") or {})} if same else judge.get("options")
    if options:
        out["options"] = options
    return {**judge, **out}
