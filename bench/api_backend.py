"""The openai backend's request throughput against a real server behind ~200 ms of latency.

    python bench/api_backend.py [--requests 32] [--concurrency 16] [--latency 0.2] [--max-tokens 8]

Starts llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`)
on the embedded GGUF (SmolLM2-135M-Instruct) on a free loopback port, and a
loopback proxy in front of it that sleeps --latency seconds before forwarding
every POST, as a remote API's network and queueing would. The same N short
chat prompts (pipelines/prompts/benign.jsonl), greedy, max_tokens 8 (so that
latency, not llama.cpp's compute, dominates), go through:

  ours c=16  `OpenAIBackend.chat`, concurrency 16, through the proxy
  raw  c=16  the baseline: `openai.AsyncOpenAI` with an asyncio.Semaphore(16)
             issuing the same requests, through the proxy
  ours c=1   `OpenAIBackend.chat`, concurrency 1, through the proxy
  direct     raw, one at a time, straight to the server (no proxy): the
             server's own time per request, which bounds every figure above

llama-cpp-python's server computes one request at a time (a lock around the
model), so concurrency only overlaps the proxy's latency with that compute:
requests/s cannot exceed 1 / (server time per request), and the printed
ceiling says so. Both sides send extra_body {"repeat_penalty": 1.0}.

Targets: ours/raw >= 0.9x at concurrency 16, ours(16)/ours(1) >= 3x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import ForeignLoad  # noqa: E402

import openai  # noqa: E402

from cai.backends import Sampling, create  # noqa: E402
from cai.models import embedded_gguf  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2"
EXTRA = {"repeat_penalty": 1.0}  # llama.cpp's own default penalty off, on both sides
TARGET_RAW, TARGET_SCALE = 0.9, 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m llama_cpp.server` on the embedded GGUF; .stop() always, also on error."""

    def __init__(self, n_ctx: int):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="llama-server-", suffix=".log", delete=False)
        port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf()), "--model_alias", MODEL,
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{port}/v1"
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(self.url + "/models", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    sys.exit(f"llama.cpp server did not start: {Path(self.log.name).read_text()[-2000:]}")
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


class LatencyProxy:
    """Loopback proxy: every POST sleeps `latency` seconds, then is forwarded; GETs pass straight."""

    def __init__(self, upstream: str, latency: float):
        base = upstream.rsplit("/v1", 1)[0]

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real API would

            def log_message(self, *a):
                pass

            def _relay(self, method, body=None):
                req = urllib.request.Request(base + self.path, data=body, method=method,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=600) as resp:
                        status, data = resp.status, resp.read()
                except urllib.error.HTTPError as exc:
                    status, data = exc.code, exc.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._relay("GET")

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(latency)
                self._relay("POST", body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128  # the default backlog of 5 can drop bursts of connects (1 s SYN retry)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def load_prompts(n: int) -> list[str]:
    prompts = [json.loads(line)["prompt"] for line in open(ROOT / "pipelines/prompts/benign.jsonl", encoding="utf-8")
               if line.strip()]
    if len(prompts) < n:
        sys.exit(f"only {len(prompts)} benign prompts, asked for {n}")
    return prompts[:n]


def ours(url: str, convs, max_tokens: int, concurrency: int):
    backend = create("openai", model=MODEL, base_url=url, extra_body=EXTRA, concurrency=concurrency)
    sampling = [Sampling(max_new_tokens=max_tokens, temperature=0.0)] * len(convs)
    t0 = time.perf_counter()
    texts = backend.chat(convs, sampling)
    secs = time.perf_counter() - t0
    failed = [t for t in texts if not isinstance(t, str)]
    if failed:
        sys.exit(f"{len(failed)} calls failed, first: {failed[0]}")
    return secs, texts, backend.stats


def raw(url: str, convs, max_tokens: int, concurrency: int):
    """The baseline: the plain async client, a semaphore, gather. Same request fields as ours."""

    async def main():
        async with openai.AsyncOpenAI(base_url=url, api_key=os.environ["OPENAI_API_KEY"]) as client:
            gate = asyncio.Semaphore(concurrency)

            async def one(conv):
                async with gate:
                    resp = await client.chat.completions.create(
                        model=MODEL, messages=conv, max_tokens=max_tokens, temperature=0.0, top_p=1.0,
                        extra_body=EXTRA)
                    return resp.choices[0].message.content.strip()

            return await asyncio.gather(*(one(c) for c in convs))

    t0 = time.perf_counter()
    texts = asyncio.run(main())
    return time.perf_counter() - t0, texts, None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.2, help="seconds the proxy adds to every POST")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs of each concurrent arm, alternated ours/raw; the median is shown (default 3)")
    args = ap.parse_args(argv)
    os.environ["OPENAI_API_KEY"] = "sk-bench-dummy"  # the local server checks no key; both clients need one

    convs = [[{"role": "user", "content": p}] for p in load_prompts(args.requests)]
    c = args.concurrency
    load = ForeignLoad().start()
    t_start = time.perf_counter()
    server = Server(args.n_ctx)
    proxy = None
    try:
        boot_s = time.perf_counter() - t_start
        proxy = LatencyProxy(server.url, args.latency)
        import llama_cpp
        print(f"llama-cpp-python {llama_cpp.__version__} server on {embedded_gguf().name} (n_ctx {args.n_ctx}), "
              f"up in {boot_s:.1f}s; openai {openai.__version__}; {os.cpu_count()} CPUs, "
              f"python {platform.python_version()}")
        print(f"{args.requests} benign prompts, greedy, max_tokens {args.max_tokens}, extra_body {EXTRA}; "
              f"proxy adds {args.latency * 1000:.0f} ms to every POST")
        print("note: llama-cpp-python's server computes one request at a time; concurrency only overlaps "
              "the proxy latency with that compute")

        # Warm-up: model pages, the chat template's shared prefix in llama.cpp's KV state, connections.
        raw(proxy.url, convs[:2], args.max_tokens, 2)
        ours(proxy.url, convs[:2], args.max_tokens, 2)

        direct = raw(server.url, convs, args.max_tokens, 1)
        runs = {"ours": [], "raw": []}
        for _ in range(args.repeats):  # alternate, so drift in the machine hits both alike
            runs["ours"].append(ours(proxy.url, convs, args.max_tokens, c))
            runs["raw"].append(raw(proxy.url, convs, args.max_tokens, c))
        serial = ours(proxy.url, convs, args.max_tokens, 1)
    finally:
        if proxy:
            proxy.stop()
        server.stop()  # before load.stop(): the server's CPU time counts as ours once it is reaped

    def median(trials):
        trials = sorted(trials, key=lambda t: t[0])
        return trials[len(trials) // 2], f"{trials[0][0]:.2f}-{trials[-1][0]:.2f}s"

    (o_s, o_texts, o_stats), o_range = median(runs["ours"])
    (r_s, r_texts, _), r_range = median(runs["raw"])
    s_s, s_texts, _ = serial
    d_s, d_texts, _ = direct
    n = args.requests
    service = d_s / n
    ceiling = min(c / (args.latency + service), 1 / service)
    rows = [
        (f"ours, concurrency {c}", "proxy", o_s, o_texts, o_range),
        (f"raw AsyncOpenAI + Semaphore({c})", "proxy", r_s, r_texts, r_range),
        ("ours, concurrency 1", "proxy", s_s, s_texts, ""),
        ("raw, concurrency 1 (server time)", "direct", d_s, d_texts, ""),
    ]
    print()
    print(f"{'client':<34} {'via':<6} {'seconds':>8} {'req/s':>7} {'ms/req':>7} {'= direct':>9}  range")
    for name, via, secs, texts, spread in rows:
        same = sum(a == b for a, b in zip(texts, d_texts))
        print(f"{name:<34} {via:<6} {secs:>8.2f} {n / secs:>7.2f} {secs / n * 1000:>7.0f} {same:>4}/{n:<4}  {spread}")
    print("  = direct: greedy answers identical to the direct one-at-a-time answers")
    print(f"  range: fastest-slowest of the {args.repeats} runs of each concurrent arm (median shown)")
    print(f"  server time {service * 1000:.0f} ms/request -> ceiling at concurrency {c}: "
          f"min({c}/({args.latency:.2f}+{service:.3f}), 1/{service:.3f}) = {ceiling:.2f} req/s "
          f"(the server's one-at-a-time compute bounds it, not the client)")
    print(f"  ours' client stats (median run): {o_stats}")

    ratio_raw = r_s / o_s  # (n/o_s) / (n/r_s)
    ratio_scale = s_s / o_s
    print()
    print(f"target: ours/raw requests/s at concurrency {c} >= {TARGET_RAW}x: "
          f"{'MET' if ratio_raw >= TARGET_RAW else 'NOT MET'} ({n / o_s:.2f} vs {n / r_s:.2f} req/s = {ratio_raw:.2f}x)")
    print(f"target: ours concurrency {c} / concurrency 1 >= {TARGET_SCALE:.0f}x: "
          f"{'MET' if ratio_scale >= TARGET_SCALE else 'NOT MET'} ({n / o_s:.2f} vs {n / s_s:.2f} req/s = "
          f"{ratio_scale:.2f}x; about {ceiling * s_s / n:.2f}x is all this server allows)")
    load.stop()
    print(f"{load.describe()}; total {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
