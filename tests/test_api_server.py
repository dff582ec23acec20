"""The openai backend against a real OpenAI-compatible server: llama.cpp's, serving the
embedded GGUF on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import datasets
import pytest

from cai.backends import Sampling, create

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
        f"backend: openai\nmodel: smollm2\nbase_url: {server}\nlimit: 4\nrounds: 1\nfew_shot: 1\n"
        f"concurrency: 4\nextra_body: {{repeat_penalty: 1.1}}\n"
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
