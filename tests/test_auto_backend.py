"""`backend: auto`: vLLM only where it is installed, works and is repaid; the choice kept per run folder.

The real vLLM choice runs in the vLLM environment (tests/test_vllm.py); here vLLM's presence is
simulated at the one place auto looks for it, and the transformers choice runs for real.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from cai.backends import auto
from cai.backends.specs import model_spec
from cai.cli import app
from cai.config import load_pipeline
from cai.generate import settle_backends

REAL_FIND_SPEC = importlib.util.find_spec


@pytest.fixture
def vllm_here(monkeypatch):
    """vLLM installed and finding a CPU (no import of it happens)."""
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "vllm" else REAL_FIND_SPEC(name, *a))
    monkeypatch.setattr(auto, "vllm_platform", lambda: "cpu")
    monkeypatch.setattr(auto, "_has_gpu", lambda: False)


def test_auto_is_transformers_without_vllm():
    spec, note = auto.resolve(model_spec(backend="auto", options={"batch_size": 4}), planned_calls=10_000)
    assert spec.backend == "transformers" and spec.options.batch_size == 4
    assert note == "backend auto: transformers (vLLM is not installed; pip install 'cai-engine[vllm]' adds it)"


def test_auto_picks_vllm_only_for_a_job_that_repays_its_start(vllm_here):
    small, note = auto.resolve(model_spec(backend="auto"), planned_calls=199)
    assert small.backend == "transformers" and "199 model calls planned" in note and "from 200" in note
    big, note = auto.resolve(model_spec(backend="auto", options={"dtype": "bfloat16", "batch_size": 8}), 200)
    assert big.backend == "vllm" and note == "backend auto: vllm (vLLM on cpu, 200 model calls planned)"
    # Shared options carry over; vLLM's own are its defaults (which fit a CPU: tests/test_vllm.py).
    assert big.options.dtype == "bfloat16" and big.options.gpu_memory_utilization is None
    assert big.identity().endswith("|vllm|bfloat16")
    # Size unknown (eval, audit): transformers on a CPU.
    assert auto.resolve(model_spec(backend="auto"))[0].backend == "transformers"


def test_auto_without_a_device_vllm_supports(vllm_here, monkeypatch):
    monkeypatch.setattr(auto, "vllm_platform", lambda: None)
    spec, note = auto.resolve(model_spec(backend="auto"), 10_000)
    assert spec.backend == "transformers" and "finds no device" in note


def _pipeline(tmp_path, limit: int, policy: str = "{model: embedded}"):
    path = tmp_path / "p.yaml"
    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    path.write_text(f"name: auto\nconstitution: {root / 'constitution/harmless.yaml'}\n"
                    f"prompts: [{root / 'pipelines/prompts/red_team.jsonl'}]\n"
                    f"policy: {policy}\nlimit: {limit}\nrounds: 1\nout: {tmp_path / 'run'}\n")
    return path


def test_planned_calls_count_every_stage_and_the_judge(vllm_here, tmp_path):
    # 10 prompts x (respond + 2 rounds x (critique + revise)) = 50, + 10 x 2 orders x 3 principles = 60
    for threshold, chosen in ((111, "transformers"), (110, "vllm")):
        config = load_pipeline(_pipeline(tmp_path, 1, f"{{model: embedded, options: {{vllm_min_calls: {threshold}}}}}"))
        config.rounds, config.feedback.enabled, config.feedback.principles = 2, True, 3
        (note,) = settle_backends(config, 10)
        assert config.policy.backend == chosen and "110 model calls planned" in note
        assert config.judge is None  # the judge is the policy: one backend serves both
    # Kept prompts (mode: keep) are answered once and never judged: 6 revised x 11 + 4 kept = 70.
    config = load_pipeline(_pipeline(tmp_path, 1, "{model: embedded, options: {vllm_min_calls: 71}}"))
    config.rounds, config.feedback.enabled, config.feedback.principles = 2, True, 3
    (note,) = settle_backends(config, 10, n_kept=4)
    assert config.policy.backend == "transformers" and "70 model calls planned" in note


@pytest.mark.slow
def test_the_first_runs_choice_is_kept_and_flags_still_force(embedded, vllm_here, tmp_path, monkeypatch):
    """A real run on the embedded model chooses transformers (a small job) and records it; a larger
    resume that vLLM would now repay keeps transformers; --backend forces either."""
    runner = CliRunner()
    pipeline = _pipeline(tmp_path, 1, "{model: embedded, options: {vllm_min_calls: 5}}")
    done = runner.invoke(app, ["generate", str(pipeline)])
    assert done.exit_code == 0, done.output
    assert ("backend auto: transformers (3 model calls planned; vLLM's start-up on a CPU repays from 5 "
            "(options.vllm_min_calls))") in done.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["model"]["backend"] == "transformers" and run["model"]["chosen_by"].startswith("backend auto")
    assert run["config"]["policy"]["backend"] == "transformers" and run["counts"]["model_calls"] == 3
    # 2 prompts (6 calls planned) would now pick vLLM, but the folder keeps its backend: only the
    # new prompt's 3 calls are made (a switch would recompute everything under a new identity).
    done = runner.invoke(app, ["generate", str(pipeline), "--limit", "2"])
    assert done.exit_code == 0, done.output
    assert "backend auto: transformers (chosen by this run folder's first run" in done.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["model"]["backend"] == "transformers" and run["counts"]["model_calls"] == 3
    assert run["counts"]["resumed"] == 1
    # A fresh folder with the same job would choose vLLM; --backend transformers forces it off.
    config = load_pipeline(pipeline, limit=2, out=str(tmp_path / "other"))
    assert settle_backends(config, 2) and config.policy.backend == "vllm"
    config = load_pipeline(pipeline, limit=2, out=str(tmp_path / "other"), backend="transformers")
    assert settle_backends(config, 2) == [] and config.policy.backend == "transformers"


def test_auto_takes_batch_size_but_not_another_backends_option(tmp_path):
    config = load_pipeline(_pipeline(tmp_path, 1), batch_size=2)
    assert config.policy.backend == "auto" and config.policy.options.batch_size == 2
    assert settle_backends(config, 1) and config.policy.options.batch_size == 2
    with pytest.raises(Exception) as info:
        load_pipeline(_pipeline(tmp_path, 1), base_url="http://127.0.0.1:1/v1")
    assert "--base-url: the auto backend has no such option" in str(info.value)
