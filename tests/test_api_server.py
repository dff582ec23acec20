"""The openai backend against a real OpenAI-compatible server: llama.cpp's, serving the
embedded GGUF on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import datasets
import pytest

from cai.backends import Sampling, create
from helpers import send_json

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-llama-canary-41b7"
# llama.cpp applies its own repeat penalty unless told not to; match the transformers side.
EXTRA = {"repeat_penalty": 1.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("llama_cpp.server", reason="install the dev extra: llama-cpp-python[server]")
    from cai.models import embedded_gguf

    port = _free_port()
    log = open(tmp_path_factory.mktemp("llama") / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf()), "--model_alias",
         "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/models", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"llama.cpp server did not start: {Path(log.name).read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _prompts(n: int) -> list[str]:
    sets = [ROOT / "pipelines" / "prompts" / f for f in ("benign.jsonl", "red_team.jsonl")]
    return [json.loads(line)["prompt"] for f in sets for line in list(open(f))[: n // 2]]


def test_greedy_answers_agree_with_the_transformers_backend(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    convs = [[{"role": "user", "content": p}] for p in _prompts(16)]
    s = [Sampling(max_new_tokens=16)] * len(convs)
    api = create("openai", model="smollm2", base_url=server, extra_body=EXTRA, concurrency=4).chat(convs, s)
    local = create("transformers", model="embedded").chat(convs, s)
    same = sum(a == b for a, b in zip(api, local))
    same_start = sum(a.split()[:1] == b.split()[:1] for a, b in zip(api, local))
    print(f"\ngreedy agreement, llama.cpp Q4_1 vs transformers fp32: {same}/16 identical, "
          f"{same_start}/16 same first word")
    # The server computes with the quantized weights, the backend with dequantized floats:
    # near-ties diverge, so not all match; a wrong chat template or sampler matches almost none.
    assert same >= 5 and same_start >= 10


def test_choice_logprobs_from_the_server(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    conv = [{"role": "user", "content": "Is the sky blue? Answer Yes or No."}]
    (scores,) = create("openai", model="smollm2", base_url=server, extra_body=EXTRA).choice_logprobs([conv], ["Yes", "No"])
    assert all(s < 0 for s in scores) and scores[0] != scores[1]


def test_cai_generate_over_the_server(server, tmp_path):
    pipeline = tmp_path / "api.yaml"
    pipeline.write_text(
        f"name: api\nconstitution: {ROOT / 'constitution' / 'harmless.yaml'}\n"
        f"prompts: [{ROOT / 'pipelines' / 'prompts' / 'red_team.jsonl'}, {ROOT / 'pipelines' / 'prompts' / 'benign.jsonl'}]\n"
        f"policy: {{backend: openai, model: smollm2, options: {{base_url: '{server}', concurrency: 4,"
        " extra_body: {repeat_penalty: 1.1}}}\nlimit: 4\nrounds: 1\nfew_shot: 1\n"
    )
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cai", "generate", str(pipeline), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["records"] == 4 and run["counts"]["model_calls"] == 4 * 3
    assert run["model"]["identity"].startswith("api:smollm2")
    if run["counts"]["pairs"]:
        assert sum(len(s) for s in datasets.load_dataset(str(out / "dataset")).values()) == run["counts"]["pairs"]
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0
    assert json.loads((out / "run.json").read_text())["counts"]["model_calls"] == 0


def test_a_server_judges_a_transformers_policy(server, tmp_path):
    """AI feedback across backends: the policy in-process, the judge behind the API."""
    pipeline = tmp_path / "judge.yaml"
    pipeline.write_text(
        f"name: judged\nconstitution: {ROOT / 'constitution' / 'harmless.yaml'}\n"
        f"prompts: [{ROOT / 'pipelines' / 'prompts' / 'red_team.jsonl'}]\nlimit: 2\nrounds: 1\nfew_shot: 1\n"
        "sampling: {respond: {max_new_tokens: 32}, critique: {max_new_tokens: 32}, revise: {max_new_tokens: 32}}\n"
        "feedback: {enabled: true, pairs: samples, samples: 2, principles: 2,"
        " sample_sampling: {max_new_tokens: 32, temperature: 0.9}}\n"
        f"judge: {{backend: openai, model: smollm2, options: {{base_url: '{server}', extra_body: {{repeat_penalty: 1.0}}}}}}\n"
    )
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "cai", "generate", str(pipeline), "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": KEY}, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    c = run["counts"]
    assert run["judge"]["identity"].startswith("api:smollm2") and not run["judge"]["same_as_policy"]
    assert run["model"]["identity"].startswith("SmolLM2-135M-Instruct")
    assert c["comparisons"] + c["skipped_identical"] == 2 and c["comparisons"] >= 1
    assert c["judge_calls"] == c["comparisons"] * 2 * 2  # both orders x 2 principles
    assert c["unusable"] < c["comparisons"]  # the server's top logprobs do carry the letters
    assert c["pairs"] + c["ties"] + c["low_confidence"] + c["unusable"] == c["comparisons"]
    records = [json.loads(l) for f in (out / "records").glob("*.jsonl") for l in f.open()]
    comps = [comp for r in records for comp in r["feedback"]["comparisons"]]
    assert any(comp["p_first"] is not None and comp["p_second"] is not None and comp["p_first"] != comp["p_second"]
               for comp in comps)
    print("\nllama.cpp judge labels:", [(round(x["p_first"], 3), round(x["p_second"], 3)) for x in comps
                                        if x["p_a"] is not None])


class FaultProxy:
    """Loopback proxy to the server that spoils every fifth request (20 %), cycling through
    429 with Retry-After, 500, a response slower than the client's timeout, and a dropped
    connection. In storm mode it instead refuses every request with 429 for `storm` seconds from
    the first one, then passes everything."""

    KINDS = ("429", "500", "slow", "drop")

    def __init__(self, upstream: str, slow_seconds: float = 0, storm: float | None = None):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.faults: dict[str, int] = {k: 0 for k in self.KINDS}
        self.storm_until: float | None = None
        self.bodies: list[dict] = []  # every POST body, as sent by the client
        lock, counter, proxy = threading.Lock(), [0], self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _relay(self, method, body=None):
                req = urllib.request.Request(upstream.rsplit("/v1", 1)[0] + self.path, data=body, method=method,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=600) as resp:
                        status, data = resp.status, resp.read()
                except urllib.error.HTTPError as exc:
                    status, data = exc.code, exc.read()
                self._send(status, data)

            def _send(self, status, data, headers=()):
                send_json(self, status, data, headers)  # after a slow fault the client is gone

            def do_GET(self):
                self._relay("GET")

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    proxy.bodies.append(json.loads(body))
                    n = counter[0] = counter[0] + 1
                    if storm is not None and proxy.storm_until is None:
                        proxy.storm_until = time.monotonic() + storm
                if storm is not None:
                    kind = "429" if time.monotonic() < proxy.storm_until else None
                else:
                    kind = proxy.KINDS[(n // 5) % 4] if n % 5 == 2 else None
                if kind:
                    proxy.faults[kind] += 1
                if kind == "429":
                    return self._send(429, b'{"error": {"message": "slow down"}}', [("Retry-After", "1")])
                if kind == "500":
                    return self._send(500, b'{"error": {"message": "injected"}}')
                if kind == "drop":
                    self.close_connection = True
                    return self.connection.shutdown(socket.SHUT_RDWR)
                if kind == "slow":
                    time.sleep(slow_seconds)
                self._relay("POST", body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _api_pipeline(tmp_path: Path, name: str, url: str, limit: int = 5, options: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nconstitution: {ROOT / 'constitution' / 'harmless.yaml'}\n"
        f"prompts: [{ROOT / 'pipelines' / 'prompts' / 'benign.jsonl'}]\n"
        f"policy: {{backend: openai, model: smollm2, options: {{base_url: '{url}', concurrency: 2, timeout: 15,"
        f" extra_body: {{repeat_penalty: 1.1}}{options}}}}}\nlimit: {limit}\nrounds: 1\nfew_shot: 1\n"
        f"out: {tmp_path / name}\n"
        "sampling: {respond: {max_new_tokens: 48}, critique: {max_new_tokens: 48}, revise: {max_new_tokens: 48}}\n"
    )
    return path


def _cai_generate(pipeline: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "cai", "generate", str(pipeline)],
                          capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": KEY}, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]


def test_faults_at_20_percent_change_nothing_but_the_retry_count(server, tmp_path):
    proxy = FaultProxy(server, slow_seconds=17)
    for name, url in (("clean", server), ("faulty", proxy.url)):
        _cai_generate(_api_pipeline(tmp_path, name, url))
    proxy.server.shutdown()
    clean, faulty = (json.loads((tmp_path / n / "run.json").read_text()) for n in ("clean", "faulty"))
    assert all(proxy.faults.values()), proxy.faults  # every kind of fault happened
    assert faulty["status"] == "complete" and faulty["counts"]["failed"] == 0
    assert faulty["backend_stats"]["retries"] >= sum(proxy.faults.values())
    assert clean["backend_stats"]["retries"] == 0

    def rows(name):
        if not list((tmp_path / name / "sft").glob("*.parquet")):
            return []  # every record flagged: no pairs to load
        ds = datasets.load_dataset(str(tmp_path / name / "sft"))
        return sorted((r["id"], json.dumps(r["messages"])) for s in ds.values() for r in s)

    def records(name):
        recs = [json.loads(l) for f in sorted((tmp_path / name / "records").glob("shard-*")) for l in open(f)]
        return sorted((r["id"], r["initial"], r["final"]) for r in recs)

    assert records("faulty") == records("clean") and len(records("clean")) == 5
    assert rows("faulty") == rows("clean")
    assert faulty["counts"]["pairs"] == clean["counts"]["pairs"]
    assert faulty["counts"]["flagged"] == clean["counts"]["flagged"]


def test_a_429_storm_is_waited_out_with_no_failed_record(server, tmp_path):
    """Every request refused with 429 for 5 s: the client's own retries (1 here) run out, then the
    backend holds all requests for the server's Retry-After and tries again."""
    proxy = FaultProxy(server, storm=5)
    _cai_generate(_api_pipeline(tmp_path, "clean", server, limit=3))
    _cai_generate(_api_pipeline(tmp_path, "storm", proxy.url, limit=3, options=", max_retries: 1"))
    proxy.server.shutdown()
    storm = json.loads((tmp_path / "storm" / "run.json").read_text())
    assert proxy.faults["429"] >= 4  # refused again and again for the storm's 5 s
    assert storm["status"] == "complete" and storm["counts"]["failed"] == 0
    assert storm["backend_stats"]["rate_limited"] >= 1  # waited out by the backend, not by the client alone

    def texts(name):
        recs = [json.loads(l) for f in sorted((tmp_path / name / "records").glob("shard-*")) for l in open(f)]
        return sorted((r["id"], r["initial"], r["final"]) for r in recs)

    assert texts("storm") == texts("clean") and len(texts("clean")) == 3


def test_a_judge_without_logprobs_votes_against_the_real_server(server, tmp_path):
    """options.logprobs: false: the judge asks for {"answer": ...} with response_format json_schema,
    sampled, and labels by vote share; nothing asks the server for log-probabilities."""
    proxy = FaultProxy(server, storm=0)  # passes everything, and keeps what was sent
    # llama-cpp-python's server takes the schema in its own json_object form, not OpenAI's json_schema.
    path = _api_pipeline(tmp_path, "votes", proxy.url, limit=3, options=", logprobs: false, structured_output: json_object")
    path.write_text(path.read_text() + "feedback: {enabled: true, pairs: samples, principles: 1, votes: 3}\n")
    _cai_generate(path)
    proxy.server.shutdown()
    summary = json.loads((tmp_path / "votes" / "run.json").read_text())
    assert summary["judge"]["method"] == "votes" and summary["status"] == "complete"
    asked = [b for b in proxy.bodies if "response_format" in b]
    assert asked and len(asked) == summary["counts"]["judge_calls"]
    assert not [b for b in proxy.bodies if b.get("logprobs")]
    assert {b["temperature"] for b in asked} == {1.0} and len({b["seed"] for b in asked}) == len(asked)
    assert {b["response_format"]["type"] for b in asked} == {"json_object"}
    recs = [json.loads(l) for f in (tmp_path / "votes" / "records").glob("shard-*") for l in open(f)]
    comps = [c for r in recs for c in r["feedback"]["comparisons"]]
    assert comps and all(c["malformed"] == 0 for c in comps)  # the server kept to the schema
    assert all(round(c["p_first"] * 3, 6) == round(c["p_first"] * 3) for c in comps)  # shares of 3 votes
    print("\nllama.cpp votes:", [(c["p_first"], c["p_second"]) for c in comps])


def test_a_batch_run_answered_by_the_real_model_matches_the_online_run(server, tmp_path):
    """The loopback Batch API answers each request line from the llama.cpp server: greedy, the
    records equal those of the same pipeline sent online."""
    from batch_server import BatchServer

    batches = BatchServer(upstream=server)
    _cai_generate(_api_pipeline(tmp_path, "online", server, limit=3))
    _cai_generate(_api_pipeline(tmp_path, "batch", batches.url, limit=3, options=", batch: true, batch_poll_seconds: 0.2"))
    batches.close()
    run = json.loads((tmp_path / "batch" / "run.json").read_text())
    assert len(batches.created) == 3 and run["backend_stats"]["requests"] == 0  # respond, critique, revise

    def texts(name):
        recs = [json.loads(l) for f in sorted((tmp_path / name / "records").glob("shard-*")) for l in open(f)]
        return sorted((r["id"], r["initial"], json.dumps(r["rounds"]), r["final"]) for r in recs)

    assert texts("batch") == texts("online") and len(texts("online")) == 3
    assert run["tokens"]["total"]["input"] > 0  # the server's usage, carried in the batch output
