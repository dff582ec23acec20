"""Scoring with a reward model: one number per (prompt messages, completion) at the sequence's last token.

The text is rendered exactly as TRL's RewardTrainer renders its training rows
(the chat template over prompt + assistant turn), so scores match training.
"""

from __future__ import annotations

from typing import Sequence

import torch


def _conversation(prompt, completion) -> list[dict]:
    prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    return prompt + list(completion)


@torch.no_grad()
def score(model, tok, prompts: Sequence, completions: Sequence, batch_size: int = 8,
          max_length: int = 1024) -> list[float]:
    """Reward-model scores; rows are right-padded and the model reads its last non-pad token."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for p, c in zip(prompts, completions):
        ids = tok.apply_chat_template(_conversation(p, c), tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        rows.append(list(ids)[-max_length:])
    out: list[float] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in chunk], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk], device=device)
        out += model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()
    model.train(was_training)
    return out


def pair_accuracy(model, tok, pairs, max_length: int = 1024) -> dict:
    """Held-out pairwise accuracy: the share of pairs whose chosen answer scores above the rejected one."""
    from cai.stats import wilson

    prompts = list(pairs["prompt"])
    chosen = score(model, tok, prompts, list(pairs["chosen"]), max_length=max_length)
    rejected = score(model, tok, prompts, list(pairs["rejected"]), max_length=max_length)
    wins = sum(c > r for c, r in zip(chosen, rejected))
    n = len(prompts)
    lo, hi = wilson(wins, n)
    return {"accuracy": wins / n if n else None, "n": n, "ci95": [lo, hi],
            "mean_margin": sum(c - r for c, r in zip(chosen, rejected)) / n if n else None}


class RewardScorer:
    """A reward model loaded from a `cai train reward` output, callable on (prompts, completions)."""

    def __init__(self, path: str, max_length: int = 1024, device: str | None = None):
        from cai.train.trl_algos import load_reward_model, load_tokenizer

        self.tok = load_tokenizer(path)
        self.model = load_reward_model(path, self.tok).eval()
        if device:
            self.model.to(device)
        self.path, self.max_length = path, max_length

    def __call__(self, prompts: Sequence, completions: Sequence) -> list[float]:
        return score(self.model, self.tok, prompts, completions, max_length=self.max_length)
