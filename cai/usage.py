"""Tokens and cost: what a run spent and saved, by stage and by model; what a plan expects.

Backends count each call's [input, output] tokens (an API's `usage`, an
in-process model's tokenizer; the scripted stand-in estimates ~4 characters a token), the cache
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
        if price is not None and getattr(spec.options, "batch", False):
            off = 1 - price.batch_discount
            price = price.model_copy(update={"input_per_mtok": price.input_per_mtok * off,
                                             "output_per_mtok": price.output_per_mtok * off})
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


def spent_in_cache(cache, priced: dict) -> tuple[int, float]:
    """Tokens and USD that every call in a run folder's cache cost when it was made (earlier runs too)."""
    tokens, usd = 0, 0.0
    for model, (inp, out) in cache.usage_by_model().items():
        tokens += inp + out
        if model in priced:
            usd += (inp * priced[model].input_per_mtok + out * priced[model].output_per_mtok) / 1e6
    return tokens, usd


class Budget:
    """`--token-budget` / `--max-cost` over a run folder: what its cache has cost so far, plus what
    the next chunk is expected to cost (the plan's estimate per prompt at first, then the run's
    own average), must stay within the budget, or the run stops before that chunk."""

    def __init__(self, tokens: int | None, usd: float | None, priced: dict, before: tuple[int, float],
                 estimate: dict | None):
        self.max_tokens, self.max_usd, self.priced = tokens, usd, priced
        self.before_tokens, self.before_usd = before
        est_tokens = (estimate["input"] + estimate["output"]) if estimate else 0
        est_usd = estimate.get("usd", 0.0) if estimate else 0.0
        pending = estimate["prompts"] if estimate else 0  # no estimate (a huge run): the first chunk goes unchecked
        self.per_prompt = (est_tokens / pending, est_usd / pending) if pending else (0.0, 0.0)

    def _now(self, model_tokens: dict) -> tuple[int, float]:
        tokens = sum(c.get("input", 0) + c.get("output", 0) for c in model_tokens.values())
        usd = sum(_usd(_plain(c), self.priced[m]) for m, c in model_tokens.items() if m in self.priced)
        return self.before_tokens + tokens, self.before_usd + usd

    def stop_before(self, model_tokens: dict, done: int, next_n: int, left: int) -> str | None:
        """None to go on, or the one-line reason to stop before the next `next_n` prompts."""
        tokens, usd = self._now(model_tokens)
        run_tokens, run_usd = tokens - self.before_tokens, usd - self.before_usd
        each = (run_tokens / done, run_usd / done) if done else self.per_prompt
        checks = [("--token-budget", self.max_tokens, tokens, each[0], "{:,.0f} tokens"),
                  ("--max-cost", self.max_usd, usd, each[1], "${:,.4f}")]
        for flag, limit, now, per, unit in checks:
            if limit is not None and now + per * next_n > limit:
                need = now + per * left
                return (f"budget reached: this run folder has spent {unit.format(now)} of {flag} {unit.format(limit)}, "
                        f"and the next {next_n} prompts would take about {unit.format(per * next_n)} more; "
                        f"{left} prompts are left (about {unit.format(need)} in all): run the same command with "
                        f"a higher {flag} to continue")
        return None
