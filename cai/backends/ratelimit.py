"""Requests and tokens per minute for an API, and waiting out its 429s without failing the run.

Pacing rather than a bursty bucket: each request takes the next free slot of
both budgets, so no minute ever exceeds `rpm` or `tpm`, however many requests
are in flight. A request's tokens are estimated up front (its text at ~4
characters a token, plus the reply's max tokens) and corrected by the
`usage` the server reports. A 429 holds every request of the backend, not just
the one refused, for the server's Retry-After (or a doubling backoff).
"""

from __future__ import annotations

import asyncio
import time

BACKOFF_CAP = 30.0  # seconds between tries when the server gives no Retry-After


def estimate_tokens(conversation: list[dict], reply_tokens: int) -> int:
    from cai.usage import estimate_input

    return estimate_input(conversation) + reply_tokens


def retry_after(exc, attempt: int) -> float:
    """Seconds a 429 asks us to wait: retry-after-ms, retry-after (seconds), else 1, 2, 4 ... 30."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers.get(name)) * scale)
        except (TypeError, ValueError):
            continue
    return min(BACKOFF_CAP, 2.0 ** attempt)


class Pacer:
    def __init__(self, rpm: float | None = None, tpm: float | None = None):
        self.request_gap = 60.0 / rpm if rpm else 0.0
        self.token_gap = 60.0 / tpm if tpm else 0.0
        self.next_request = self.next_token = 0.0

    async def acquire(self, tokens: int) -> None:
        now = time.monotonic()
        start = max(now, self.next_request, self.next_token)
        self.next_request = start + self.request_gap
        self.next_token = start + tokens * self.token_gap
        if start > now:
            await asyncio.sleep(start - now)

    def settle(self, estimated: int, used: int | None) -> None:
        """The server's count of a request's tokens replaces our estimate."""
        if used is not None:
            self.next_token += (used - estimated) * self.token_gap

    def hold(self, seconds: float) -> None:
        """After a 429: nobody sends before `seconds` from now."""
        until = time.monotonic() + seconds
        self.next_request, self.next_token = max(self.next_request, until), max(self.next_token, until)
