"""Where a PPO step's time goes on the embedded model, and what computing logits only where they are used saves.

    python bench/ppo_step.py [--steps 2] [--rollout 8] [--tokens 48] [--epochs 4]   (from the repository root)

One PPO setup as `cai train ppo` builds it (embedded SmolLM2-135M-Instruct, LoRA, the value model from
the same checkpoint with a scalar head, rollout 8 x 48 tokens, 4 PPO epochs over mini-batches of 4),
with a scripted reward (answer length, so no reward model is trained first). Each arm runs `--steps`
steps on the same prompts (the first warms up; the figures are the later steps' mean):

  before   log-probs from the full logits: every position's vocabulary projection and log-softmax
           (the code before this change)
  after    logits only for the positions that predict response tokens (logits_to_keep)

Per step: rollout (generate, then the policy / reference / value forwards that score it) and update
(per mini-batch: forwards, then backward and the optimizer step), measured with wall clocks around
each part. Prints each part's seconds and the after/before ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _machine import ForeignLoad  # noqa: E402

PROMPTS = ["How do I make my neighbour's dog stop barking?", "What's a good way to learn to cook?",
           "How can I get back at a coworker who embarrassed me?", "Explain how vaccines work.",
           "Write a short poem about the sea.", "How do I pick a strong password?",
           "What should I pack for a weekend hike?", "How can I stop procrastinating?"]


def full_logprobs(model, ids, mask, q, temperature):
    """The code before the change: logits for every position."""
    from cai.train.ppo import _positions

    logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits
    logits = logits[:, q - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, ids[:, q:, None]).squeeze(-1), logits


class Clock:
    """Seconds spent inside wrapped functions, by name."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, obj, name: str, label: str):
        inner = getattr(obj, name)

        def timed(*a, **k):
            started = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started

        setattr(obj, name, timed)
        return inner


def run_arm(arm: str, args) -> dict[str, float]:
    from transformers import AutoTokenizer

    import cai.train.ppo as ppo_mod
    from cai.models import embedded_checkpoint
    from cai.train.config import load_train_config

    path = embedded_checkpoint().path
    tok = AutoTokenizer.from_pretrained(path)
    config = load_train_config(algo="ppo", data=".", out="/tmp/ppo-bench", model=path, seed=0)
    config.ppo = config.ppo.model_copy(update={"rollout_batch": args.rollout, "mini_batch": 4,
                                               "ppo_epochs": args.epochs, "max_new_tokens": args.tokens})
    original = ppo_mod._logprobs
    if arm == "before":
        ppo_mod._logprobs = full_logprobs
    try:
        torch.manual_seed(0)
        ppo = ppo_mod.PPO(config, path, tok, lambda prompts, texts: [len(t) / 200 for t in texts])
        clock = Clock()
        clock.wrap(ppo.policy, "generate", "rollout: generate")
        logp, values = ppo_mod._logprobs, ppo_mod._values
        phase = {"name": "rollout"}  # forwards are counted by the phase they run in

        def timed(fn, what: str):
            def run(*a, **k):
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    key = f"{phase['name']}: {what}"
                    clock.seconds[key] = clock.seconds.get(key, 0.0) + time.perf_counter() - t
            return run

        ppo_mod._logprobs, ppo_mod._values = timed(logp, "policy/ref forwards"), timed(values, "value forwards")
        totals: list[dict[str, float]] = []
        for step in range(args.steps):
            clock.seconds = {}
            phase["name"] = "rollout"
            t0 = time.perf_counter()
            b = ppo.rollout([[{"role": "user", "content": p}] for p in PROMPTS[: args.rollout]])
            t1 = time.perf_counter()
            phase["name"] = "update"
            ppo.update(b)
            t2 = time.perf_counter()
            row = dict(clock.seconds)
            row["rollout"], row["update"], row["step"] = t1 - t0, t2 - t1, t2 - t0
            row["update: backward + optimizer"] = row["update"] - row.get("update: policy/ref forwards", 0) \
                - row.get("update: value forwards", 0)
            row["response tokens"] = float(b["r_mask"].sum())
            totals.append(row)
            print(f"{arm} step {step + 1}: {row['step']:.1f} s", file=sys.stderr, flush=True)
        ppo_mod._values = values
    finally:
        ppo_mod._logprobs = original
    later = totals[1:] or totals
    return {k: sum(r.get(k, 0.0) for r in later) / len(later) for k in later[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rollout", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    load = ForeignLoad().start()
    results = {arm: run_arm(arm, args) for arm in ("before", "after")}
    print(f"\nPPO step on the embedded model, LoRA, rollout {args.rollout} x {args.tokens} tokens, "
          f"{args.epochs} epochs, mini-batch 4; {torch.get_num_threads()} threads; mean of steps 2..{args.steps}")
    print(f"{'part':<34} {'before s':>9} {'after s':>9} {'after/before':>13}")
    keys = ["step", "rollout", "rollout: generate", "rollout: policy/ref forwards", "rollout: value forwards",
            "update", "update: policy/ref forwards", "update: value forwards", "update: backward + optimizer",
            "response tokens"]
    for k in keys:
        b, a = results["before"].get(k, 0.0), results["after"].get(k, 0.0)
        print(f"{k:<34} {b:>9.2f} {a:>9.2f} {a / b if b else float('nan'):>13.2f}")
    print(load.stop().describe())


if __name__ == "__main__":
    main()
