"""Fixtures only: the embedded model's plain checkpoint and a tiny random Llama for fast plumbing tests.

Shared helpers (constitutions, prompt files, pipelines, fake judges) live in tests/helpers.py;
test modules import that, never conftest or each other.
"""

from __future__ import annotations

import pytest

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
