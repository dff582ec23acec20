"""From a ModelSpec to a running backend: lazily, with every load failure as one clear line.

A LazyBackend knows its identity (what the cache keys on) without loading
anything and loads the model on the first call that reaches it. Wrapped in a
CachedBackend, that is the first call that misses the cache: a finished
re-run, `--plan` and a fully cached audit or eval load no model at all.
Backends that hold no weights (an API client, the scripted stand-in) are made
at once: an API's preflight takes milliseconds, and a bad key, URL or model
name then fails before a run folder is touched.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from cai.backends import Backend, BackendUnavailable, Conversation, Progress, Sampling, create
from cai.backends.specs import _Spec
from cai.errors import InputError, Problem

WEIGHTS = {"transformers", "vllm"}  # backends that load a model in-process: deferred


def _bad_model(spec: _Spec, flag: str, exc: BaseException) -> InputError:
    """A model path or id that cannot be resolved or loaded is bad input, not a crash."""
    return InputError([Problem(flag, None, "", f"{spec.model}: {exc}".splitlines()[0])])


def spec_identity(spec: _Spec, flag: str = "--model") -> str:
    """The identity the spec's backend will have, without loading it; a bad model is bad input."""
    from cai.models import ModelNotFound

    try:
        return spec.identity()
    except (ModelNotFound, OSError) as exc:
        raise _bad_model(spec, flag, exc) from None


def precheck(spec: _Spec, flag: str = "--model") -> None:
    """What can be told without loading or connecting: fail before any run folder is touched."""
    import importlib.util

    from cai.backends import REGISTRY, auto

    spec = auto.resolve(spec)[0]
    extra = REGISTRY[spec.backend][2]
    if extra and importlib.util.find_spec(extra) is None:
        raise InputError([Problem("backend", None, "", f"backend {spec.backend!r} needs {extra}: "
                                  f"pip install 'cai-engine[{extra}]'")])
    if spec.backend == "openai":
        if spec.model == "embedded":
            raise InputError([Problem(flag, None, "", "name the model the server serves "
                                      "(the openai backend has no embedded model)")])
        if not os.environ.get(spec.options.api_key_env):
            raise InputError([Problem("api_key_env", None, "", f"environment variable {spec.options.api_key_env} "
                                      "is not set (it holds the API key)")])


def load(spec: _Spec, flag: str = "--model") -> Backend:
    """The backend for a spec, loaded now; load failures become InputError (exit 2) or one-line errors."""
    from cai.backends.openai_api import MissingAPIKey, UnknownModel
    from cai.models import ModelNotFound

    precheck(spec, flag)
    try:
        return create(spec.backend, **spec.constructor_options())
    except (ModelNotFound, UnknownModel) as exc:
        raise _bad_model(spec, flag, exc) from None
    except BackendUnavailable as exc:
        raise InputError([Problem("backend", None, "", str(exc))]) from None
    except MissingAPIKey as exc:
        raise InputError([Problem("api_key_env", None, "", str(exc))]) from None
    except ConnectionError as exc:
        raise RuntimeError(str(exc).splitlines()[0]) from None
    except OSError as exc:
        raise _bad_model(spec, flag, exc) from None


class LazyBackend:
    """A spec's backend, loaded on its first call; its identity is known before."""

    def __init__(self, spec: _Spec, flag: str = "--model"):
        from cai.backends import auto

        spec = auto.resolve(spec)[0]  # generate has settled it for the job already; eval, audit: here
        precheck(spec, flag)
        self.spec, self.flag = spec, flag
        self.identity = spec_identity(spec, flag)
        self.supports_logprobs = True
        self.load_seconds = 0.0
        self._backend: Backend | None = None
        if spec.backend not in WEIGHTS:
            self.backend  # noqa: B018 - cheap to make, and its errors belong before any work

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            started = time.perf_counter()
            self._backend = load(self.spec, self.flag)
            self.load_seconds += time.perf_counter() - started
        return self._backend

    @property
    def stats(self) -> dict:
        return dict(getattr(self._backend, "stats", {}) or {})

    def use_run_dir(self, run_dir) -> None:
        """Tell an API backend its run folder (batch ids); never loads a model for it."""
        if self.spec.backend not in WEIGHTS and hasattr(self.backend, "use_run_dir"):
            self.backend.use_run_dir(run_dir)

    @property
    def usage(self) -> list | None:
        """[input, output] tokens of each call of the last batch (see CachedBackend)."""
        return getattr(self._backend, "usage", None)

    @property
    def streams_results(self) -> bool:
        return self.spec.backend not in WEIGHTS and getattr(self.backend, "streams_results", False)

    def chat(self, conversations: Sequence[Conversation], sampling: Sequence[Sampling],
             progress: Progress | None = None, **streamed) -> list:
        return self.backend.chat(conversations, sampling, progress=progress, **streamed)

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        progress: Progress | None = None, **streamed) -> list:
        return self.backend.choice_logprobs(conversations, choices, progress=progress, **streamed)

    def close(self) -> None:
        if self._backend is not None:
            close(self._backend)
            self._backend = None


def close(*owned) -> None:
    # Backends with worker processes (vLLM) must stop them before the interpreter exits.
    for b in owned:
        if b is not None and hasattr(b, "close"):
            b.close()
