"""Any OpenAI-compatible chat API (OpenAI, Together, `vllm serve`, llama.cpp's server).

A stage batch becomes concurrent requests, at most `concurrency` in flight.
Retries are the openai client's own: exponential backoff with jitter that
honours Retry-After, on 429, 5xx, timeouts and dropped connections. A request
that still fails comes back as CallFailed, so the engine keeps its example
for the next run instead of losing the batch. A request gets no answer for
at most timeout x (max_retries + 1); once `concurrency` requests in a row (at
least 3) got none, the server has stopped answering: the batch's other calls
fail at once, pending, instead of each waiting as long. The API key is read
from the environment variable the pipeline names and lives only in the client.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Sequence

import openai

from cai.backends import CallFailed, Conversation, Progress, Sampling
from cai.backends.openai_wire import CLIENT_ARGS, chat_request, parse_reply, parse_scores, score_request
from cai.backends.ratelimit import Pacer, estimate_tokens, retry_after
from cai.backends.specs import identity


class MissingAPIKey(ValueError):
    pass


class UnknownModel(ValueError):
    pass


class _Stopped(Exception):
    pass


async def _unless(stop: asyncio.Event, call):
    """Await `call`, cancelling it if `stop` is set first (then raise _Stopped)."""
    task, halt = asyncio.ensure_future(call), asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, halt}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        halt.cancel()
    if not task.done():
        task.cancel()
        raise _Stopped
    return task.result()


class OpenAIBackend:
    supports_logprobs = True  # via top_logprobs; a server without them fails the call clearly
    streams_results = True  # each answer goes to `on_result` as it lands (the cache commits it at once)

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 16, timeout: float = 60.0, max_retries: int = 2,
                 preflight_timeout: float = 10.0, extra_body: dict | None = None,
                 repetition_penalty_field: str | None = None, rpm: float | None = None, tpm: float | None = None,
                 rate_limit_wait: float = 600.0, structured_output: str = "json_schema", batch: bool = False,
                 batch_poll_seconds: float = 30.0, **_):
        key = os.environ.get(api_key_env)
        if not key:
            raise MissingAPIKey(f"environment variable {api_key_env} is not set (it holds the API key)")
        self.model = model
        # The same model behind another URL gives the same answers; server-specific
        # sampling fields (extra_body) change them, so they are part of the identity.
        self.extra_body = dict(extra_body or {})
        self.identity = identity("openai", model, extra_body=self.extra_body,
                                 repetition_penalty_field=repetition_penalty_field, structured_output=structured_output)
        self.request_options = {"extra_body": self.extra_body, "repetition_penalty_field": repetition_penalty_field,
                                "structured_output": structured_output}  # what shapes each request body
        self.concurrency = max(1, concurrency)
        # requests: calls made; attempts: HTTP tries, so attempts - requests = the client's retries.
        self.stats = {"requests": 0, "attempts": 0, "retries": 0, "failed": 0, "rate_limited": 0}
        self.pacer, self.rate_limit_wait = Pacer(rpm, tpm), rate_limit_wait
        self.batch, self.batch_poll = batch, batch_poll_seconds
        if batch:
            self.stats.update(batches_submitted=0, batches_reattached=0, batch_requests=0)
        self.batch_dir = Path(os.environ.get("CAI_CACHE_DIR") or Path.home() / ".cache" / "cai") / "batches"
        self._batches = None
        self._client_args = dict(base_url=base_url, api_key=key, timeout=timeout, max_retries=max_retries)
        self._preflight(preflight_timeout)

    def use_run_dir(self, run_dir) -> None:
        """Batch ids are kept in the run folder, so a rerun there re-attaches to batches in flight."""
        self.batch_dir = Path(run_dir) / "batches"

    def batches(self):
        from cai.backends.openai_batch import BatchJobs

        if self._batches is None or self._batches.state_dir != self.batch_dir:
            self._batches = BatchJobs(self._client_args, self.batch_dir, self.batch_poll, self.stats)
        return self._batches

    def _preflight(self, seconds: float) -> None:
        """Fail in seconds, before any long work, on an unreachable server or an unserved model.

        One try: a server that accepts the connection but does not answer within `seconds`
        (options.preflight_timeout) will not answer the run's requests either.
        """
        args = {**self._client_args, "max_retries": 0, "timeout": seconds}
        with openai.OpenAI(**args) as client:
            try:
                served = [m.id for m in client.models.list()]
            except openai.APITimeoutError:
                raise ConnectionError(f"cannot reach {client.base_url}: no answer within {seconds:g} s "
                                      "(options.preflight_timeout)") from None
            except openai.APIConnectionError as exc:
                raise ConnectionError(f"cannot reach {client.base_url}: {exc}") from None
            except openai.AuthenticationError as exc:
                raise MissingAPIKey(f"the server refused the API key: {exc.message}") from None
            except openai.APIStatusError:
                return  # some servers do not list models; the first call will tell
        if served and self.model not in served:
            raise UnknownModel(f"the server does not serve {self.model!r} (it serves: {', '.join(served[:10])})")

    def _run(self, jobs, progress: Progress | None, unit: int = 1, on_result=None):
        async def main():
            # One client per event loop: httpx connections cannot cross loops.
            async def count_attempt(request):
                self.stats["attempts"] += 1

            http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [count_attempt]})
            async with openai.AsyncOpenAI(**self._client_args, http_client=http) as client:
                gate = asyncio.Semaphore(self.concurrency)
                silent, stop = [0], asyncio.Event()  # requests in a row that got no answer, after retries

                async def one(index, job):
                    call, estimate = job
                    async with gate:
                        try:
                            if stop.is_set():
                                self.stats["failed"] += 1
                                return CallFailed(f"not sent: {self._stopped(silent[0])}")
                            self.stats["requests"] += 1
                            waited, tries = 0.0, 0
                            while True:
                                await self.pacer.acquire(estimate)
                                try:
                                    answer, used = await _unless(stop, call(client))
                                except openai.RateLimitError as exc:
                                    # The client's own retries are spent: hold every request and try again,
                                    # for up to options.rate_limit_wait seconds in all.
                                    pause = retry_after(exc, tries)
                                    if waited + pause > self.rate_limit_wait:
                                        raise
                                    self.stats["rate_limited"] += 1
                                    waited, tries = waited + pause, tries + 1
                                    self.pacer.hold(pause)
                                    continue
                                self.pacer.settle(estimate, sum(used) if used else None)
                                usage[index] = used
                                break
                        except _Stopped:
                            self.stats["failed"] += 1
                            return CallFailed(f"abandoned: {self._stopped(silent[0])}")
                        except (openai.APIError, ValueError) as exc:
                            # A timeout is an APIConnectionError too: the server is silent, not refusing.
                            silent[0] = silent[0] + 1 if isinstance(exc, openai.APIConnectionError) else 0
                            if silent[0] >= max(3, self.concurrency):
                                stop.set()
                            self.stats["failed"] += 1
                            return CallFailed(self._failure(exc))
                        else:
                            silent[0] = 0
                            if on_result:
                                on_result(index, answer, used)
                            return answer
                        finally:
                            if progress:
                                progress(unit)

                return await asyncio.gather(*(one(i, j) for i, j in enumerate(jobs)))

        usage: list[list[int] | None] = [None] * len(jobs)
        self.usage = usage  # [input, output] tokens per call, as the server counted them
        try:
            return asyncio.run(main())
        finally:
            self.stats["retries"] = self.stats["attempts"] - self.stats["requests"]

    @staticmethod
    def _stopped(count: int) -> str:
        return f"the server stopped answering ({count} requests in a row timed out or could not connect)"

    def _failure(self, exc: Exception) -> str:
        if isinstance(exc, openai.APITimeoutError):
            args = self._client_args
            return (f"APITimeoutError: no answer within {args['timeout']:g} s, {args['max_retries'] + 1} tries "
                    "(options.timeout, options.max_retries)")
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]

    def chat_body(self, conv: Conversation, s: Sampling) -> dict:
        return chat_request(self.model, conv, s, **self.request_options)

    def score_body(self, conv: Conversation) -> dict:
        return score_request(self.model, self.extra_body, conv)

    def _online(self, bodies: list[dict], parse, progress, unit: int, on_result) -> list:
        def job(body: dict):
            async def call(client):
                known = {k: v for k, v in body.items() if k in CLIENT_ARGS}
                resp = await client.chat.completions.create(
                    **known, extra_body={k: v for k, v in body.items() if k not in CLIENT_ARGS} or None)
                return parse(resp)
            return call, estimate_tokens(body["messages"], body["max_tokens"])

        return self._run([job(b) for b in bodies], progress, unit=unit, on_result=on_result)

    def _answer(self, bodies: list[dict], parse, progress, unit: int, on_result) -> list:
        if not self.batch:
            return self._online(bodies, parse, progress, unit, on_result)
        from openai.types.chat import ChatCompletion

        out, self.usage = [], []
        for result in self.batches().run(bodies, progress, unit):
            try:
                value, used = (result, None) if isinstance(result, CallFailed) else parse(
                    ChatCompletion.model_validate(result))
            except (ValueError, TypeError) as exc:
                value, used = CallFailed(str(exc)), None
            out.append(value)
            self.usage.append(used)
        return out

    def chat(self, conversations: Sequence[Conversation], sampling: Sequence[Sampling],
             progress: Progress | None = None, on_result=None) -> list[str | CallFailed]:
        return self._answer([self.chat_body(c, s) for c, s in zip(conversations, sampling)], parse_reply,
                            progress, 1, on_result)

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        progress: Progress | None = None, on_result=None) -> list[list[float] | CallFailed]:
        """Log-probability of each choice's first token as the reply's first token.

        Chat APIs cannot score a given continuation, only report the top
        alternatives for the token they generate, so choices must differ in their
        first token (" A" / " B", not "(A)" / "(B)"). A choice outside the top 20
        gets a log-probability below every listed one.
        """
        return self._answer([self.score_body(c) for c in conversations], lambda resp: parse_scores(resp, choices),
                            progress, len(choices), on_result)
