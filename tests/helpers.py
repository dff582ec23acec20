"""Shared test helpers: small constitutions, prompt files and pipelines written per test, scripted
runs, fake judges, and a JSON answer for loopback test servers. Test modules import this module
(`from helpers import ...`), never conftest.py or each other."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from cai.backends.scripted import ScriptedBackend
from cai.backends.specs import OPTIONS as BACKEND_OPTIONS
from cai.config import load_pipeline
from cai.generate import generate
from cai.records import RecordStore

PRINCIPLES = [
    {"id": "harm", "critique": "Point out anything harmful in the last response.",
     "revision": "Rewrite the response without the harmful parts.",
     "comparison": "Which response is less harmful?", "weight": 2.0},
    {"id": "honesty", "critique": "Point out anything untrue in the last response.",
     "revision": "Rewrite the response so it is truthful.",
     "comparison": "Which response is more honest?"},
    {"id": "kindness", "critique": "Point out anything unkind in the last response.",
     "revision": "Rewrite the response to be kind.",
     "comparison": "Which response is kinder?"},
    {"id": "privacy", "critique": "Point out any privacy problem in the last response.",
     "revision": "Rewrite the response to protect privacy.",
     "comparison": "Which response better protects privacy?", "weight": 0.5},
]


def write_constitution(path: Path, principles=None, few_shot=None, name="test") -> Path:
    doc = {"name": name, "version": "1", "principles": principles or PRINCIPLES}
    if few_shot:
        doc["few_shot"] = few_shot
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def write_prompts(path: Path, n: int, prefix: str = "p", category: str = "test") -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"{prefix}-{i:05d}", "prompt": f"Question number {i} from {prefix}?",
                                 "category": category}) + "\n")
    return path


_OPTION_NAMES = {name for cls in BACKEND_OPTIONS.values() for name in cls.model_fields}


def write_pipeline(directory: Path, n_prompts: int = 12, backend: str = "scripted", model: str = "echo",
                   **fields) -> Path:
    """A pipeline in `directory` with its own constitution and prompts (scripted backend by default).

    `backend`, `model` and backend options (batch_size, base_url, ...) go into the policy spec.
    """
    options = {k: fields.pop(k) for k in list(fields) if k in _OPTION_NAMES}
    policy = {"backend": backend, "model": model, **({"options": options} if options else {})}
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "constitution.yaml").exists():
        write_constitution(directory / "constitution.yaml")
    if not (directory / "prompts.jsonl").exists():
        write_prompts(directory / "prompts.jsonl", n_prompts)
    doc = {"name": "t", "constitution": "constitution.yaml", "prompts": ["prompts.jsonl"],
           "policy": policy, "rounds": 2, "test_size": 0.25,
           "out": str(directory / "out"), **fields}
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def send_json(handler, status: int, data: bytes, headers=()) -> None:
    """Answer an HTTP request from a test server; a client that already gave up is fine."""
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)
    except OSError:
        pass



def run(pipeline: Path, backend=None, **overrides) -> dict:
    """`cai generate` on a pipeline file, with the scripted echo model unless a backend is given."""
    config = load_pipeline(pipeline, **overrides)
    return generate(config, str(pipeline), backend=backend or ScriptedBackend("echo"))


def make_run(directory: Path, n_prompts: int = 16, **fields) -> Path:
    """A finished scripted run in directory/out."""
    run(write_pipeline(directory, n_prompts=n_prompts, **fields))
    return directory / "out"


def records_by_id(out: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for rec in RecordStore(out / "records"):
        found.setdefault(rec["id"], []).append(rec)
    return found


OPTIONS = re.compile(r"\(A\) (.*)\n\(B\) (.*?)(?:\n\n|$)", re.S)


def options_asked(conversation) -> tuple[str, str]:
    """The two options of the comparison being judged (the last user turn that has them; earlier
    ones are few-shot examples)."""
    asked = [m["content"] for m in conversation if m["role"] == "user" and "Options:" in m["content"]][-1]
    a, b = OPTIONS.search(asked).groups()
    return a.strip(), b.strip()


class FakeJudge(ScriptedBackend):
    """A judge whose option log-probabilities come from a function of the two options' texts."""

    def __init__(self, prefer, identity="scripted:judge", reasoning="B is weaker because it is shorter."):
        super().__init__("judge")
        self.identity, self.prefer, self.reasoning, self.scored = identity, prefer, reasoning, 0

    def chat(self, conversations, sampling, progress=None):
        if "Options:" in conversations[0][-1]["content"]:
            return [self.reasoning for _ in conversations]
        return super().chat(conversations, sampling, progress)

    def choice_logprobs(self, conversations, choices, progress=None):
        self.scored += len(conversations)
        out = []
        for conv in conversations:
            out.append(list(self.prefer(*options_asked(conv))))
        return out


class SeededEcho(ScriptedBackend):
    """Echo that also says the sampling seed and temperature each call got (seeds must travel)."""

    def chat(self, conversations, sampling, progress=None):
        out = super().chat(conversations, sampling, progress)
        return [f"{o} [seed {s.seed if not s.greedy else '-'} t {s.temperature}]" for o, s in zip(out, sampling)]


class CrashOnce(ScriptedBackend):
    """Echo whose process dies (os._exit) at its `at`-th chat call, once per marker file: a worker crash."""

    def __init__(self, marker: str, at: int = 3):
        super().__init__("echo")
        self.marker, self.at, self.seen = marker, at, 0

    def chat(self, conversations, sampling, progress=None):
        import os

        self.seen += 1
        if self.seen == self.at and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return super().chat(conversations, sampling, progress)


def judged(backend, constitution, items, **judge_options) -> list:
    """Verdicts of a Judge (principles, cot, ...) asking `backend` directly, no cache."""
    from cai.judge import Judge

    judge = Judge(constitution, **judge_options)
    return judge.compare(items, judge.calls(backend))


def process_block(config, constitution, block, out):
    """One block through the engine's stages in this process (a spawned worker in tests)."""
    from cai.engine import Engine

    engine = Engine(config, constitution, ScriptedBackend("echo"), out)
    try:
        return engine.process(block)
    finally:
        engine.cache.close()


KEY = "sk-canary-7f3a9c2e51"


class Stub:
    """A tiny loopback chat-completions server (the openai backend's tests). `fail(body, attempt)` may
    return (status, headers) or (status, headers, message) to answer with an error; `logprobs` may be
    a list of (token, logprob) for the top log-probabilities."""

    def __init__(self, fail=None, model="stub-model", logprobs=True, latency=0.01, reasoning=None, reply=None):
        self.fail = fail or (lambda body, attempt: None)
        self.model = model
        self.logprobs = logprobs
        self.latency = latency  # seconds before each answer
        self.reasoning = reasoning  # a function of the last message: the reply's reasoning_content
        self.reply = reply  # a function of the request body: the reply's content (default: echo)
        self.lock = threading.Lock()
        self.attempts: dict[str, int] = {}
        self.bodies: list[str] = []  # every request's messages and settings, in arrival order
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self.usage: list[list[int]] = []  # [prompt, completion] tokens each answer reported
        self.in_flight = self.max_in_flight = self.requests = 0
        self.bad_auth = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status, payload, headers=()):
                send_json(self, status, json.dumps(payload).encode(), headers)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": stub.model, "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    stub.bad_auth += 1
                last = body["messages"][-1]["content"]
                with stub.lock:
                    stub.requests += 1
                    stub.bodies.append(json.dumps(body, sort_keys=True))
                    stub.arrivals.append(time.monotonic())
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                    attempt = stub.attempts[last] = stub.attempts.get(last, 0) + 1
                try:
                    threading.Event().wait(stub.latency)
                    failure = stub.fail(body, attempt)
                    if failure:
                        status, headers, *message = failure
                        return self._send(status, {"error": {"message": (message or ["injected"])[0]}}, headers)
                    msg = {"role": "assistant", "content": stub.reply(body) if stub.reply else f"echo: {last}"}
                    if stub.reasoning:
                        msg["reasoning_content"] = stub.reasoning(last)
                    choice = {"index": 0, "message": msg, "finish_reason": "stop"}
                    used = [len(json.dumps(body["messages"])) // 4, len(msg["content"].split())]
                    with stub.lock:
                        stub.usage.append(used)
                    if body.get("logprobs") and stub.logprobs:
                        pairs = stub.logprobs if isinstance(stub.logprobs, list) else [(" A", -0.2), (" B", -1.8)]
                        top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in pairs]
                        choice["logprobs"] = {"content": [{"token": " A", "logprob": -0.2, "bytes": None,
                                                           "top_logprobs": top}]}
                    self._send(200, {"id": "x", "object": "chat.completion", "created": 0,
                                     "model": stub.model, "choices": [choice],
                                     "usage": {"prompt_tokens": used[0], "completion_tokens": used[1],
                                               "total_tokens": sum(used)}})
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
