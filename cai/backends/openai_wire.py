"""The chat-completions API's bodies: what a call sends and how its answer is read.

One place for both ways a call travels: online through the openai client
(cai/backends/openai_api.py) and as a line of a batch file (openai_batch.py,
cai/batch_files.py), so a batch answer is read exactly as an online one.
"""

from __future__ import annotations

import math
from typing import Sequence

from cai.backends import Conversation, Sampling, logaddexp
from cai.reasoning import wrap

# A judge's vote, enforced by servers with structured output: OpenAI's form (OpenAI, vLLM) and
# llama-cpp-python's (json_object with a schema).
_CHOICE = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["A", "B"]}},
           "required": ["answer"], "additionalProperties": False}
CHOICE_FORMATS = {"json_schema": {"type": "json_schema", "json_schema": {"name": "choice", "strict": True, "schema": _CHOICE}},
                  "json_object": {"type": "json_object", "schema": _CHOICE}}


def usage_of(resp) -> list[int] | None:
    u = resp.usage
    return [u.prompt_tokens, u.completion_tokens] if u and u.prompt_tokens is not None else None


def chat_request(model: str, conv: Conversation, s: Sampling, extra_body: dict | None = None,
                 repetition_penalty_field: str | None = None, structured_output: str = "json_schema") -> dict:
    """The request body of one chat call, as sent online or written to a batch file (the spec's
    options of the same names)."""
    body = {"model": model, "messages": conv, "max_tokens": s.max_new_tokens, "temperature": s.temperature,
            "top_p": s.top_p, **(extra_body or {})}
    if not s.greedy and s.seed is not None:
        body["seed"] = s.seed
    if s.schema == "choice" and structured_output != "off":
        body["response_format"] = CHOICE_FORMATS[structured_output]
    if repetition_penalty_field and s.repetition_penalty != 1.0:
        body[repetition_penalty_field] = s.repetition_penalty
    return body


def score_request(model: str, extra_body: dict | None, conv: Conversation) -> dict:
    return {"model": model, "messages": conv, "max_tokens": 1, "temperature": 0.0, "logprobs": True,
            "top_logprobs": 20, **(extra_body or {})}


# Request fields the openai client takes as arguments; the rest of a body goes as extra_body.
CLIENT_ARGS = {"model", "messages", "max_tokens", "temperature", "top_p", "seed", "response_format", "logprobs",
                "top_logprobs"}


def parse_reply(resp) -> tuple[str, list[int] | None]:
    """A chat completion's answer (a reasoning model's thinking wrapped in front) and its usage."""
    message = resp.choices[0].message
    extra = message.model_extra or {}
    # Reasoning models' thinking (DeepSeek, vLLM: reasoning_content; others: reasoning).
    thinking = extra.get("reasoning_content") or extra.get("reasoning") or getattr(message, "reasoning", None)
    if message.content is None:
        raise ValueError("the model spent max_new_tokens thinking and gave no answer: raise max_new_tokens"
                         if thinking else "the server returned no message content")
    return wrap(thinking if isinstance(thinking, str) else None, message.content.strip()), usage_of(resp)


def parse_scores(resp, choices: Sequence[str]) -> tuple[list[float], list[int] | None]:
    content = resp.choices[0].logprobs and resp.choices[0].logprobs.content
    if not content:
        raise ValueError("the server returned no logprobs: it cannot judge with soft labels")
    top: dict[str, float] = {}  # " A" and "A" are one answer: their probabilities add
    for t in content[0].top_logprobs:
        key = t.token.strip()
        top[key] = logaddexp(top[key], t.logprob) if key in top else t.logprob
    floor = min(top.values(), default=0.0) - math.log(2)
    return [top.get(c.strip(), floor) for c in choices], usage_of(resp)
