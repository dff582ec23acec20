"""The Backend protocol and the registry of backends, imported lazily by name.

A backend takes a whole stage batch at once and decides how to run it
(micro-batches for transformers, continuous batching for vLLM, concurrent
requests for an API), so the engine never loops over single examples.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

Message = dict  # {"role": "user" | "assistant" | "system", "content": str}
Conversation = list[Message]
# Called with the units just finished: conversations for chat, (conversation,
# choice) pairs for choice_logprobs.
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # >1 discourages loops, which small models fall into greedily
    seed: int | None = None  # per call; ignored when greedy
    schema: str | None = None  # "choice": the reply must be {"answer": "A"|"B"} (a judge's vote; APIs enforce it)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def key(self) -> dict:
        """What the output depends on: greedy calls share cache entries whatever the seed."""
        # Built by hand: dataclasses.asdict deep-copies, and this runs for every call.
        if self.greedy:
            key = {"max_new_tokens": self.max_new_tokens, "temperature": 0.0, "top_p": 1.0,
                   "repetition_penalty": self.repetition_penalty, "seed": None}
        else:
            key = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                   "top_p": self.top_p, "repetition_penalty": self.repetition_penalty, "seed": self.seed}
        if self.schema:  # only when set, so every other call keeps its cache key
            key["schema"] = self.schema
        return key


class CallFailed(Exception):
    """A call that still failed after the backend's own retries.

    Returned in place of its completion, never raised, so one bad request does
    not sink a stage batch: the engine leaves that example pending for the next run.
    """


@runtime_checkable
class Backend(Protocol):
    identity: str  # model id + content hash or revision, for cache keys and provenance
    supports_logprobs: bool

    def chat(
        self, conversations: Sequence[Conversation], sampling: Sequence[Sampling],
        progress: Progress | None = None,
    ) -> list[str | CallFailed]:
        """One completion per conversation (sampling given per conversation)."""

    def choice_logprobs(
        self, conversations: Sequence[Conversation], choices: Sequence[str],
        progress: Progress | None = None,
    ) -> list[list[float]]:
        """Log-probability of each choice as the start of the assistant's reply."""


# name -> (module, class, extra that installs its library); modules import heavy
# libraries, so they are loaded on demand.
REGISTRY = {
    "transformers": ("cai.backends.hf", "TransformersBackend", None),
    "scripted": ("cai.backends.scripted", "ScriptedBackend", None),
    "openai": ("cai.backends.openai_api", "OpenAIBackend", None),
    "vllm": ("cai.backends.vllm_local", "VLLMBackend", "vllm"),
}


def prefilled(conversation: Conversation) -> bool:
    """A conversation ending in an assistant turn: the reply continues that text (the judge's
    `The answer is: (`), instead of starting a fresh turn."""
    return bool(conversation) and conversation[-1]["role"] == "assistant"


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def raw_text(conversation: Conversation) -> str:
    """A conversation as plain text, for a pretrained model with no chat template: the paper's
    Human/Assistant turns, ending where the assistant's reply (or its prefilled start) goes."""
    turns = [m["content"] if m["role"] == "system" else
             f"{'Assistant' if m['role'] == 'assistant' else 'Human'}: {m['content']}" for m in conversation]
    return "\n\n".join(turns) + ("" if prefilled(conversation) else "\n\nAssistant:")


RAW_TURN = "\nHuman:"


def raw_reply(text: str) -> str:
    """A raw completion stops where the model starts writing the human's next turn."""
    return text.split(RAW_TURN, 1)[0].strip()


def prompt_ids(tokenizer, conversation: Conversation) -> list[int]:
    """Token ids of a conversation as the model takes it, ready for the reply: rendered by its chat
    template (continuing a prefilled assistant turn), or as raw text when it has none."""
    if not has_template(tokenizer):
        return list(tokenizer(raw_text(conversation))["input_ids"])
    prefill = prefilled(conversation)
    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=not prefill, continue_final_message=prefill,
                                        tokenize=True, return_dict=False)
    # Some transformers versions return a BatchEncoding whatever return_dict says.
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def logaddexp(a: float, b: float) -> float:
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def score_spellings(tokenizer, score, conversations, choices, progress=None) -> list:
    """`score(conversations, choices, progress)`, made fair for raw text: after "Assistant:" a reply's
    first token carries its space (" A"; Gemma's "A" alone is almost never written there), so each
    choice is scored in both spellings and their probabilities added, as the API path does."""
    if has_template(tokenizer):
        return score(conversations, choices, progress)
    rows = score(conversations, [s for c in choices for s in (c, " " + c)], None)
    if progress:
        progress(len(conversations) * len(choices))
    return [r if isinstance(r, CallFailed) else [logaddexp(r[2 * k], r[2 * k + 1]) for k in range(len(choices))]
            for r in rows]


class BackendUnavailable(RuntimeError):
    pass


def create(name: str, **options) -> Backend:
    if name not in REGISTRY:
        raise BackendUnavailable(f"unknown backend {name!r} (known: {', '.join(sorted(REGISTRY))})")
    module, cls, extra = REGISTRY[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        hint = f": pip install 'cai-engine[{extra}]'" if extra else ""
        raise BackendUnavailable(f"backend {name!r} needs {exc.name}{hint}") from exc
    return getattr(mod, cls)(**options)
