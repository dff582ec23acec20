"""Tokens and cost: what a run spent and saved, by stage and by model; what a plan expects.

Backends count each call's [input, output] tokens (an API's `usage`, an
in-process model's tokenizer; the scripted stand-in counts words), the cache
keeps them with the answer, so a cache hit's tokens count as saved. Cost comes
from a model spec's `options.price` (USD per million tokens).
"""

from __future__ import annotations

from collections import Counter

FIELDS = ("input", "output", "saved_input", "saved_output")
PER_MESSAGE = 4  # tokens a chat template adds around each message (role markers), as OpenAI documents


def estimate_input(conversation: list[dict]) -> int:
    """A conversation's tokens before any tokenizer is at hand: ~4 characters a token, plus markers."""
    return sum(len(m["content"]) // 4 + PER_MESSAGE for m in conversation)


def _plain(counter) -> dict:
    return {f: int(counter.get(f, 0)) for f in FIELDS}


def prices(config) -> dict[str, object]:
    """Model identity -> its spec's price, for the policy and judge that have one."""
    from cai.backends.loading import spec_identity

    found = {}
    for spec, flag in ((config.policy, "--model"), (config.judge_spec(), "--judge-model")):
        price = getattr(spec.options, "price", None)
        if price is not None:
            found[spec_identity(spec, flag)] = price
    return found


def _usd(tokens: dict, price, saved: bool = False) -> float:
    pre = "saved_" if saved else ""
    return (tokens[pre + "input"] * price.input_per_mtok + tokens[pre + "output"] * price.output_per_mtok) / 1e6


def summary(stage_tokens: dict, model_tokens: dict, priced: dict) -> dict:
    """run.json's `tokens` (total, by stage, by model) and, with prices, `cost` in USD."""
    total: Counter = Counter()
    for c in model_tokens.values():
        total.update(c)
    out = {"tokens": {"total": _plain(total), "stages": {k: _plain(v) for k, v in sorted(stage_tokens.items())},
                      "models": {k: _plain(v) for k, v in sorted(model_tokens.items())}}}
    if priced:
        models = {m: {"usd": round(_usd(_plain(t), priced[m]), 6), "saved_usd": round(_usd(_plain(t), priced[m], True), 6)}
                  for m, t in model_tokens.items() if m in priced}
        out["cost"] = {"usd": round(sum(m["usd"] for m in models.values()), 6),
                       "saved_usd": round(sum(m["saved_usd"] for m in models.values()), 6), "models": models}
    return out


def accuracy(estimate: dict, actual: dict) -> dict:
    """A plan's tokens beside the run's: actual / estimate per field (1.0 is exact)."""
    return {f: round(actual[f] / estimate[f], 3) if estimate.get(f) else None for f in ("input", "output")}
