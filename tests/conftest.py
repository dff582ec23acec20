"""Shared fixtures: small constitutions, prompt files and pipelines written per test, the
embedded model's plain checkpoint, and a tiny random Llama for fast plumbing tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from cai.backends.scripted import ScriptedBackend

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


def write_pipeline(directory: Path, n_prompts: int = 12, **fields) -> Path:
    """A scripted-backend pipeline in `directory` with its own constitution and prompts."""
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "constitution.yaml").exists():
        write_constitution(directory / "constitution.yaml")
    if not (directory / "prompts.jsonl").exists():
        write_prompts(directory / "prompts.jsonl", n_prompts)
    doc = {"name": "t", "constitution": "constitution.yaml", "prompts": ["prompts.jsonl"],
           "backend": "scripted", "model": "echo", "rounds": 2, "test_size": 0.25,
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


@pytest.fixture(scope="session")
def embedded():
    from cai import models

    return models.embedded_checkpoint()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, embedded) -> str:
    """A 2-layer random Llama with the embedded model's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(embedded.path)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


OPTIONS = re.compile(r"\(A\) (.*)\n\(B\) (.*)\n", re.S)


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
            a, b = OPTIONS.search(conv[0]["content"]).groups()
            out.append(list(self.prefer(a.strip(), b.strip())))
        return out
