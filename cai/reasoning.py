"""Reasoning models' thinking: kept in the records, never in critiques, revisions or the dataset.

A reply may carry thinking inline (`<think>...</think>`, or only the closing tag
when the chat template opened it, as DeepSeek-R1's does) or in a separate field
(`reasoning_content`, `reasoning`), which the openai backend wraps inline so that
one form is cached. `BackendCalls` splits every reply: the stages see the answer
alone, and the engine files the thinking under the record's `thinking`.
"""

from __future__ import annotations

import re

_BLOCK = re.compile(r"<(think|thinking)>(.*?)</\1>", re.S | re.I)
_OPEN = re.compile(r"<(think|thinking)>", re.I)
_CLOSE = re.compile(r"</(think|thinking)>", re.I)


def wrap(thinking: str | None, answer: str) -> str:
    """A separate reasoning field and the answer as one cached reply."""
    return f"<think>{thinking}</think>{answer}" if thinking else answer


def split(text: str) -> tuple[str, str | None]:
    """(the answer, the thinking or None). Unclosed thinking (cut by max_new_tokens) leaves no answer."""
    thoughts = [m.group(2).strip() for m in _BLOCK.finditer(text)]
    rest = _BLOCK.sub("", text)
    close = _CLOSE.search(rest)
    if close and not _OPEN.search(rest[:close.start()]):  # the template opened the block: "...</think>answer"
        thoughts.insert(0, rest[:close.start()].strip())
        rest = rest[close.end():]
    opened = _OPEN.search(rest)
    if opened:
        thoughts.append(rest[opened.end():].strip())
        rest = rest[:opened.start()]
    if not thoughts:
        return text, None
    return rest.strip(), "\n\n".join(t for t in thoughts if t) or None  # an empty block: thinking was off
