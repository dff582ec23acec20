"""An instant, deterministic stand-in for a model.

For plumbing tests, engine benchmarks and dry runs of a pipeline (`backend:
scripted`): it answers from the text it is given, so the same conversation
always gets the same reply and every stage sees a different one.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

from cai.backends import Conversation, Progress, Sampling
from cai.backends.specs import identity
from cai.usage import estimate_input


def echo_script(conversation: Conversation) -> str:
    last = conversation[-1]["content"]
    turn = sum(m["role"] == "assistant" for m in conversation)
    return f"Reply {turn} considering: {' '.join(last.split()[:24])}"


class ScriptedBackend:
    supports_logprobs = True

    def __init__(self, model: str | None = None, script: Callable[[Conversation], str] | None = None, **_):
        self.identity = identity("scripted", model)
        self.script = script or echo_script

    def chat(self, conversations: Sequence[Conversation], sampling: Sequence[Sampling],
             progress: Progress | None = None) -> list[str]:
        out = [self.script(c) for c in conversations]
        # The stand-in has no tokenizer: tokens as an API's are estimated (~4 characters each).
        self.usage = [[estimate_input(c), max(1, len(o) // 4)] for c, o in zip(conversations, out)]
        if progress:
            progress(len(out))
        return out

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        progress: Progress | None = None) -> list[list[float]]:
        scores = []
        self.usage = [[estimate_input(c), 0] for c in conversations]
        for conv in conversations:
            text = repr(conv).encode()
            scores.append([-1 - hashlib.sha256(text + c.encode()).digest()[0] / 64 for c in choices])
        if progress:
            progress(len(conversations) * len(choices))
        return scores
