"""Runs and servers for the `cai review` tests: a scripted run whose records include flagged ones and an
XSS prompt, and the review server on a free loopback port in a thread."""

from __future__ import annotations

import hashlib
import json
import threading
from contextlib import contextmanager
from pathlib import Path

from helpers import run, write_pipeline

from cai.backends.scripted import ScriptedBackend, echo_script
from cai.review import server

XSS_ID = 'x/<s>&"#?%ü'  # an id that is a path, markup, a query and a fragment at once
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> & "quotes"'


def script(conversation) -> str:
    """The echo model, except that critiques of FLAGME prompts are too short (flag: empty_critique)."""
    first = next(m["content"] for m in conversation if m["role"] == "user")
    if "FLAGME" in first and conversation[-1]["content"].startswith("Point out"):
        return "Fine."
    return echo_script(conversation)


class Varied(ScriptedBackend):
    """`script`, except that sampled (non-greedy) answers differ by seed, so sampled pairs are judged."""

    def chat(self, conversations, sampling, progress=None):
        out = super().chat(conversations, sampling, progress)
        return [o if s.greedy else " ".join(hashlib.sha256(f"{s.seed}{i}".encode()).hexdigest()[:6] for i in range(10))
                for o, s in zip(out, sampling)]


def write_review_prompts(path: Path, n: int = 10) -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            flag = " FLAGME" if i % 4 == 1 else ""
            cat = "cooking" if i % 2 else "safety"
            fh.write(json.dumps({"id": f"r-{i:03d}", "prompt": f"Tell me about topic {i}{flag}?", "category": cat}) + "\n")
        fh.write(json.dumps({"id": XSS_ID, "prompt": XSS, "category": "safety"}) + "\n")
    return path


def review_run(directory: Path, n: int = 10, **fields) -> Path:
    """A finished scripted run in directory/out; `fields` go into the pipeline (feedback=..., rounds=...)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_review_prompts(directory / "prompts.jsonl", n)
    pipeline = write_pipeline(directory, **fields)
    run(pipeline, backend=Varied("echo", script=script))
    return directory / "out"


def rerun(directory: Path) -> dict:
    return run(directory / "pipeline.yaml", backend=Varied("echo", script=script))


class Served:
    """`cai review RUN` in a thread: .url, .stop()."""

    def __init__(self, run_dir: Path, who: str = "tester", host: str = "127.0.0.1"):
        ready = threading.Event()

        def on_ready(url, srv):
            self.url, self.server = url, srv
            ready.set()

        self.thread = threading.Thread(target=server.serve, args=(run_dir, host, 0, who, on_ready), daemon=True)
        self.thread.start()
        assert ready.wait(30), "the review server did not start"
        self.port = self.server.server_address[1]

    def stop(self):
        self.server.shutdown()
        self.thread.join(10)


@contextmanager
def serving(directory: Path, who: str = "tester"):
    """A scripted review run in directory/out, served: yields (run dir, Served)."""
    out = review_run(directory)
    s = Served(out, who=who)
    try:
        yield out, s
    finally:
        s.stop()


def decisions_in(run_dir: Path) -> list[dict]:
    path = run_dir / "review.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
