"""`backend: auto`: vLLM where it is installed, works here, and the job repays its start-up; else transformers.

The choice is made once per run folder and kept (run.json `model.backend`): the two backends
have different identities, so switching on a resume or a larger --limit would recompute every
cached call. Everything that builds a backend goes through `resolve`, so an `auto` spec never
reaches a backend class or an identity.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from cai.backends.specs import _Spec, model_spec

CHOICES = ("transformers", "vllm")


def vllm_platform() -> str | None:
    """The device vLLM would run on ("cuda", "cpu", ...), or None when vLLM is absent or finds none.

    Importing vLLM takes seconds: only done when the job is large enough to use it.
    """
    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        from vllm.platforms import current_platform
    except Exception:  # a broken install counts as absent  # noqa: BLE001
        return None
    device = getattr(current_platform, "device_type", "") or ""
    return device if device and device not in ("", "unspecified") else None


def choose(spec: _Spec, planned_calls: int | None) -> tuple[str, str]:
    """(backend, why) for an auto spec; `planned_calls` None: size unknown (eval, audit)."""
    options = spec.options
    if importlib.util.find_spec("vllm") is None:
        return "transformers", "vLLM is not installed; pip install 'cai-engine[vllm]' adds it"
    gpu = _has_gpu()
    need = options.vllm_min_calls_gpu if gpu else options.vllm_min_calls
    if planned_calls is None and need > 0:
        return "transformers", "job size unknown; vLLM's start-up repays only large jobs"
    if planned_calls is not None and planned_calls < need:
        where = "a GPU" if gpu else "a CPU"
        return "transformers", (f"{planned_calls} model calls planned; vLLM's start-up on {where} repays "
                                f"from {need} (options.vllm_min_calls{'_gpu' if gpu else ''})")
    device = vllm_platform()
    if device is None:
        return "transformers", "vLLM is installed but finds no device it supports here"
    return "vllm", f"vLLM on {device}, {planned_calls if planned_calls is not None else 'unknown'} model calls planned"


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def concrete(spec: _Spec, backend: str) -> _Spec:
    """The auto spec as the chosen backend's spec: its shared options carried over, the rest defaults."""
    options = {"dtype": spec.options.dtype}
    if backend == "transformers":
        options.update({k: v for k in ("batch_size", "threads") if (v := getattr(spec.options, k)) is not None})
    return model_spec(backend=backend, model=spec.model, options=options)


def recorded(out: Path, key: str = "model") -> str | None:
    """The backend an earlier run into this folder used for `key` (model: the policy, or judge)."""
    try:
        model = json.loads((Path(out) / "run.json").read_text())[key]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return model.get("backend") if model.get("backend") in CHOICES else None


def resolve(spec: _Spec, planned_calls: int | None = None, out: Path | None = None,
            key: str = "model") -> tuple[_Spec, str | None]:
    """(the spec to use, a one-line note when auto chose); non-auto specs pass through."""
    if spec.backend != "auto":
        return spec, None
    kept = recorded(out, key) if out is not None else None
    if kept:
        return concrete(spec, kept), f"backend auto: {kept} (chosen by this run folder's first run; --backend overrides)"
    backend, why = choose(spec, planned_calls)
    return concrete(spec, backend), f"backend auto: {backend} ({why})"
