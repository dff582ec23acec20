"""In-process transformers backend: the CPU default, and any local or hub checkpoint.

Generation is continuous batching (cai/backends/decode.py): up to `batch_size`
rows decode together, a finished row leaves and a pending one joins, the
prefix every conversation of a stage shares (system prompt, few-shot turns)
is computed once, and each sampled row draws with its own seed. Greedy
outputs equal one-at-a-time `generate`. Scoring (choice_logprobs) runs
length-sorted, left-padded batches.

Nothing is cut: a conversation longer than `max_input_tokens` (or than the
model's context less the reply) comes back as a CallFailed naming its length
and the limit, so its record fails with that reason instead of being answered
from a headless prompt. Prompts are checked against the same limit at input
check (cai/backends/context.py), before any weights load.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from cai import models
from cai.backends import (CallFailed, Conversation, Progress, Sampling, decode, has_template, prompt_ids, raw_reply,
                          score_spellings)
from cai.backends.context import DEFAULT_MAX_INPUT_TOKENS, model_context, transformers_limit
from cai.backends.specs import identity

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TransformersBackend:
    supports_logprobs = True

    def __init__(self, model: str | None = None, batch_size: int | None = None, device: str | None = None,
                 dtype: str = "float32", max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
                 threads: int | None = None):
        # Our own progress shows per stage; transformers' per-load bars are noise there.
        hf_logging.disable_progress_bar()
        ref = models.resolve(model)
        self.identity = identity("transformers", model, dtype)
        self.max_input_tokens = max_input_tokens
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if threads:  # process-wide in torch; unset keeps torch's one per physical core
            torch.set_num_threads(threads)
        # Rows decoding together: on CPU a step is compute-bound and 16 beat 32 (bench/batching.py).
        self.batch_size = max(1, batch_size or (16 if self.device == "cpu" else 64))
        self.tokenizer = AutoTokenizer.from_pretrained(ref.path, revision=ref.revision)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            ref.path, revision=ref.revision, dtype=DTYPES[dtype]
        ).to(self.device).eval()
        self.context = model_context(self.model.config)  # positions the model has, prompt and reply together
        ends = self.model.generation_config.eos_token_id
        self.eos = {self.tokenizer.eos_token_id, *(ends if isinstance(ends, list) else [ends] if ends is not None else [])}

    def _encode(self, conversation: Conversation) -> list[int]:
        return prompt_ids(self.tokenizer, conversation)

    def _too_long(self, ids: list[int], reply_tokens: int) -> CallFailed | None:
        """Why a conversation cannot be taken whole (it is never cut), or None when it fits."""
        limit, by_context = transformers_limit(self.max_input_tokens, self.context, reply_tokens)
        if len(ids) <= limit:
            return None
        why = f"its context of {self.context} tokens less {reply_tokens} for the reply" if by_context else "options.max_input_tokens"
        return CallFailed(f"conversation is {len(ids)} tokens; the model takes at most {limit} input tokens ({why})")

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        return ids, mask

    @torch.inference_mode()
    def chat(self, conversations: Sequence[Conversation], sampling: Sequence[Sampling],
             progress: Progress | None = None) -> list[str | CallFailed]:
        encoded = [self._encode(c) for c in conversations]
        out: list[str | CallFailed | None] = [self._too_long(ids, s.max_new_tokens) for ids, s in zip(encoded, sampling)]
        todo = [i for i, refused in enumerate(out) if refused is None]
        if progress and len(todo) < len(out):
            progress(len(out) - len(todo))
        rows = [decode.Row(encoded[i], sampling[i].max_new_tokens, sampling[i].repetition_penalty,
                           0.0 if sampling[i].greedy else sampling[i].temperature, sampling[i].top_p,
                           sampling[i].seed or 0) for i in todo]
        new = decode.generate(self.model, rows, self.eos, self.tokenizer.pad_token_id, self.batch_size,
                              on_finish=progress)
        raw = not has_template(self.tokenizer)
        self.usage = [None] * len(out)  # [input, output] tokens per call (refused ones: none)
        for i, ids in zip(todo, new):
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            out[i] = raw_reply(text) if raw else text.strip()
            self.usage[i] = [len(encoded[i]), len(ids)]
        return out

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        progress: Progress | None = None) -> list[list[float] | CallFailed]:
        scores = score_spellings(self.tokenizer, self._scores, conversations, choices, progress)
        self.usage = [[len(self._encode(c)), 0] for c in conversations]
        return scores

    @torch.inference_mode()
    def _scores(self, conversations: Sequence[Conversation], choices: Sequence[str],
                progress: Progress | None = None) -> list[list[float] | CallFailed]:
        choice_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
        prefixes = [self._encode(c) for c in conversations]
        longest = max((len(ids) for ids in choice_ids), default=0)
        refused = {i: f for i, ids in enumerate(prefixes) if (f := self._too_long(ids, longest))}
        if refused:  # score the rest; the refused come back as their CallFailed
            if progress:
                progress(len(refused) * len(choices))
            keep = [i for i in range(len(prefixes)) if i not in refused]
            scored = iter(self._scores([conversations[i] for i in keep], choices, progress) if keep else [])
            return [refused[i] if i in refused else next(scored) for i in range(len(prefixes))]
        if all(len(ids) == 1 for ids in choice_ids):
            return self._next_token_logprobs(prefixes, [ids[0] for ids in choice_ids], progress)
        pairs = [(ci, k) for ci in range(len(conversations)) for k in range(len(choices))]
        scores = [[0.0] * len(choices) for _ in conversations]
        order = sorted(pairs, key=lambda p: len(prefixes[p[0]]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            rows = [prefixes[ci] + choice_ids[k] for ci, k in chunk]
            ids, mask = self._pad(rows)
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            width = ids.shape[1]
            for row, (ci, k) in enumerate(chunk):
                n = len(choice_ids[k])
                # The token at position t is predicted by the logits at t - 1.
                positions = torch.arange(width - n, width, device=ids.device)
                targets = ids[row, width - n:]
                scores[ci][k] = float(logp[row, positions - 1, targets].sum())
            if progress:
                progress(len(chunk))
        return scores

    def _next_token_logprobs(self, prefixes: list[list[int]], tokens: list[int],
                             progress: Progress | None) -> list[list[float]]:
        """Single-token choices (a judge's "A"/"B"): one forward per conversation, last position only."""
        scores: list[list[float]] = [[] for _ in prefixes]
        order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            ids, mask = self._pad([prefixes[i] for i in chunk])
            logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1].float()
            logp = torch.log_softmax(logits, dim=-1)[:, tokens]
            for row, i in enumerate(chunk):
                scores[i] = [float(x) for x in logp[row]]
            if progress:
                progress(len(chunk) * len(tokens))  # same units as the general path: (conversation, choice)
        return scores
