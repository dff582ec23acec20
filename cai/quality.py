"""Quality gates: what keeps a record out of the preference pairs (it stays in the records).

Small models often answer a revision request with meta-text ("Here is a
revised response: ...") or repeat the answer unchanged, and sometimes reply to
a critique request with a new answer instead of a critique. Each of those makes
a pair that teaches nothing, so it is flagged with a reason and counted.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

# Leading lines that announce a revision rather than being one.
_META = re.compile(
    r"""^\s*(?:
        (?:sure|certainly|okay|ok|of\ course)[!,.]?\s*
      )?(?:
        (?:here\ is|here's|here\ are|below\ is|this\ is)\ (?:a|an|the|my)?\s*
            (?:revised|rewritten|improved|updated|new|edited|corrected)[^\n:]{0,60}[:.]
      | (?:the\ )?(?:revised|rewritten|improved|updated|corrected)\s+(?:response|version|answer|text)\s*[:.\-]
      | revision\s*(?:\d+)?\s*[:.\-]
      | (?:my\ )?response\s*:
      )\s*""",
    re.IGNORECASE | re.VERBOSE,
)
_QUOTES = ('"', "'", "\u201c", "\u201d")
NEAR_DUPLICATE = 0.9  # similarity at or above which a revision counts as unchanged
ECHO = 0.8  # similarity at or above which a critique or revision just echoes its input
MIN_CRITIQUE_WORDS = 4

REASONS = (
    "empty_answer", "empty_critique", "not_a_critique",
    "empty_revision", "meta_only_revision", "revision_is_critique", "revision_unchanged",
)
# What each reason means, for people reading a record (`cai review`).
EXPLAIN = {
    "empty_answer": "the initial answer is empty",
    "empty_critique": f"a critique has fewer than {MIN_CRITIQUE_WORDS} words",
    "not_a_critique": f"a critique repeats the answer it critiques (word similarity at least {ECHO})",
    "empty_revision": "a revision is empty",
    "meta_only_revision": "a revision held only an announcement ('Here is the revised response:') and nothing else",
    "revision_is_critique": f"a revision repeats its critique instead of rewriting the answer (similarity at least {ECHO})",
    "revision_unchanged": f"the final revision is the initial answer again (word similarity at least {NEAR_DUPLICATE})",
}


def near_duplicate(a: str, b: str, threshold: float = NEAR_DUPLICATE) -> bool:
    """Word-level similarity at or above threshold (case and spacing ignored)."""
    wa, wb = a.lower().split(), b.lower().split()
    if wa == wb:
        return True
    matcher = SequenceMatcher(None, wa, wb, autojunk=False)
    # The quick ratios are upper bounds: skip the quadratic one when they already fail.
    return (matcher.real_quick_ratio() >= threshold and matcher.quick_ratio() >= threshold
            and matcher.ratio() >= threshold)


def strip_meta(text: str) -> tuple[str, bool]:
    """Remove announcing prefixes and wrapping quotes; say whether anything was removed."""
    original = text.strip()
    text = original
    while True:
        m = _META.match(text)
        if not m or m.end() == 0:
            break
        text = text[m.end():].lstrip()
    if len(text) > 1 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text, text != original


def critique_problem(critique: str, answer: str) -> str | None:
    if len(critique.split()) < MIN_CRITIQUE_WORDS:
        return "empty_critique"
    # A "critique" that mostly repeats the answer is the model answering again.
    if near_duplicate(critique, answer, ECHO):
        return "not_a_critique"
    return None


def revision_problem(raw: str, cleaned: str, critique: str) -> str | None:
    if not cleaned.strip():
        return "meta_only_revision" if raw.strip() else "empty_revision"
    # Small models often answer a revision request by repeating the critique.
    if near_duplicate(cleaned, critique, ECHO):
        return "revision_is_critique"
    return None


def record_flags(record: dict) -> list[str]:
    """All reasons this record cannot make a pair, in a stable order."""
    flags: list[str] = []
    initial = record.get("initial") or ""
    if not initial.strip():
        flags.append("empty_answer")
    for rnd in record.get("rounds", []):
        flags.extend(r for r in (rnd.get("critique_problem"), rnd.get("revision_problem")) if r)
    final = record.get("final") or ""
    # A kept (helpfulness) record is unrevised on purpose.
    if not record.get("kept") and initial.strip() and final.strip() and near_duplicate(initial, final):
        flags.append("revision_unchanged")
    return sorted(set(flags), key=REASONS.index)
