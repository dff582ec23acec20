"""Batched vs one-at-a-time generation on the real embedded model (SmolLM2-135M-Instruct).

    python bench/batching.py [--prompts 16] [--max-new-tokens 64] [--batch-sizes 1,16,32]

The same distinct prompts (pipelines/prompts/*.jsonl) go through
`TransformersBackend.chat` greedily, first one conversation per call with
batch_size=1 (the baseline), then with batch_size=B (up to B rows decoding
together in the backend's continuous-batching loop, cai/backends/decode.py).
Throughput counts the token ids each row really generated (up to and including
its end token), as the loop returns them. Batched runs are short, so each is
repeated (--repeats, default 3) and the median reported. Each batch size B runs over
max(--prompts, B) prompts and is compared with the one-at-a-time figure over
exactly those prompts, measured in the same run. It also reports whether the
batched greedy outputs equal the one-at-a-time outputs, how long prefill and a
decode step take, and how much of the batched work was padding.

Target (issue): at batch 16, >= 8x the batch-1 tokens/s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import ForeignLoad  # noqa: E402

from cai import backends  # noqa: E402
from cai.backends import Sampling, decode  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT_FILES = [ROOT / "pipelines/prompts/red_team.jsonl", ROOT / "pipelines/prompts/benign.jsonl"]
TARGET_BATCH, TARGET_RATIO = 16, 8.0


def load_prompts(n: int) -> list[str]:
    """n distinct prompts, alternating red-team and benign so lengths and topics mix."""
    from cai.config import PromptSource
    from cai.prompts import load_prompts as load  # round-robin across files, like --limit

    prompts = [ex["prompt"] for ex in load([PromptSource(path=str(p)) for p in PROMPT_FILES], limit=n)]
    if len(prompts) < n:
        sys.exit(f"only {len(prompts)} prompts available, asked for {n}")
    return prompts


CANNED_ANSWER = ("Sure. Start by finding out exactly what you need and who else is involved. "
                 "Make a short plan with two or three steps, gather what you need, and do the first "
                 "step today. If anything could hurt someone or break a rule, stop and ask someone "
                 "you trust for advice before going further.")


def critique_conversations(convs):
    """The SL-CAI critique stage's conversations, built as cai.critique.SLCAI builds them."""
    from cai.constitution import load_constitution
    from cai.critique import few_shot_turns, sample_principle

    constitution = load_constitution(ROOT / "constitution/harmless.yaml")
    out = []
    for i, conv in enumerate(convs):
        p = sample_principle(constitution.critique_principles, f"bench-{i}", 1)
        out.append(few_shot_turns(constitution, p, 1) + conv + [
            {"role": "assistant", "content": CANNED_ANSWER}, {"role": "user", "content": p.critique}])
    return out


class LoopRecorder:
    """Observes the backend's decode loop (cai/backends/decode.py): counts the tokens each row really
    generated (through its end token) and times the prefill and decode forward passes.

    Wrapping only observes: the loop's own arguments and results pass through unchanged.
    """

    def __init__(self):
        self.inner_generate, self.inner_forward = decode.generate, decode._forward
        decode.generate, decode._forward = self._generate, self._forward
        self.reset()

    def reset(self):
        self.tokens = 0  # real generated tokens (through the first end token of each row)
        self.row_steps = 0  # rows x forward passes that produced a token for them
        self.prompt_tokens = 0  # real prompt tokens prefilled
        self.prompt_slots = 0  # rows x padded prefill width
        self.prefill: list[float] = []
        self.steps: list[float] = []

    def _generate(self, model, rows, *args, **kwargs):
        outs = self.inner_generate(model, rows, *args, **kwargs)
        self.tokens += sum(map(len, outs))
        return outs

    def _forward(self, model, cache, **inputs):
        started = time.perf_counter()
        out = self.inner_forward(model, cache, **inputs)
        seconds = time.perf_counter() - started
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        if ids.shape[1] == 1:
            self.steps.append(seconds)
            self.row_steps += ids.shape[0]
        elif mask is not None:  # a join's prefill (the shared prefix's own pass has no mask)
            self.prefill.append(seconds)
            self.row_steps += ids.shape[0]
            self.prompt_slots += ids.numel()
            self.prompt_tokens += int(mask[:, -ids.shape[1]:].sum())
        return out


def run(backend, rec: LoopRecorder, convs, sampling: Sampling, batch_size: int, one_by_one: bool):
    """Generate for convs; return (texts, seconds, per-conversation (seconds, tokens) when one_by_one)."""
    backend.batch_size = batch_size
    rec.reset()
    per: list[tuple[float, int]] = []
    texts: list[str] = []
    started = time.perf_counter()
    if one_by_one:
        for c in convs:
            t0, k0 = time.perf_counter(), rec.tokens
            texts += backend.chat([c], [sampling])
            per.append((time.perf_counter() - t0, rec.tokens - k0))
    else:
        texts = backend.chat(convs, [sampling] * len(convs))
    return texts, time.perf_counter() - started, per


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f}" if values else "-"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16, help="distinct prompts (default 16)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,16,32",
                    help="comma list; 1 is always the baseline; B runs over max(--prompts, B) prompts")
    ap.add_argument("--repetition-penalty", type=float, default=1.1,
                    help="1.1 as in pipelines/default.yaml; 1.0 turns it off")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="batched runs per batch size; the median is reported (default 3)")
    ap.add_argument("--shape", default="respond", choices=["respond", "critique"],
                    help="respond: the bare prompt (default); critique: the SL-CAI critique request, "
                         "with the constitution's first few-shot example and a canned answer")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()} - {1})
    n_all = max([args.prompts, *sizes])
    prompts = load_prompts(n_all)
    convs = [[{"role": "user", "content": p}] for p in prompts]
    if args.shape == "critique":
        convs = critique_conversations(convs)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=0.0,
                        repetition_penalty=args.repetition_penalty)

    load = ForeignLoad().start()
    t0 = time.perf_counter()
    backend = backends.create("transformers", model=args.model, batch_size=1, dtype=args.dtype)
    load_s = time.perf_counter() - t0
    rec = LoopRecorder()
    print(f"model {backend.identity} ({args.dtype}, {backend.device}), loaded in {load_s:.1f}s; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}")
    print(f"greedy, max_new_tokens={args.max_new_tokens}, repetition_penalty={args.repetition_penalty}, "
          f"{n_all} distinct prompts ({args.prompts} for the main comparison), {args.shape} conversations "
          f"(median {statistics.median(len(backend._encode(c)) for c in convs):.0f} prompt tokens)")

    # Warm-up: first calls pay for allocator growth, lazy init and oneDNN kernel selection.
    warm = Sampling(max_new_tokens=8, repetition_penalty=args.repetition_penalty)
    for b in (1, min(4, n_all)):
        backend.batch_size = b
        backend.chat(convs[:b], [warm] * b)

    # Baseline: one conversation per call, batch_size=1, over every prompt any row needs.
    base_texts, base_s, per = run(backend, rec, convs, sampling, 1, one_by_one=True)
    base = {"prefill": rec.prefill, "steps": rec.steps, "row_steps": rec.row_steps,
            "tokens": rec.tokens, "slots": rec.prompt_slots, "ptoks": rec.prompt_tokens}

    rows = []
    for b in [1] + sizes:
        n = max(args.prompts, b)
        base_n_s = sum(s for s, _ in per[:n])
        base_n_tok = sum(k for _, k in per[:n])
        base_tps = base_n_tok / base_n_s
        if b == 1:
            n = args.prompts
            rows.append(dict(b=1, n=n, secs=sum(s for s, _ in per[:n]), tokens=sum(k for _, k in per[:n]),
                             tps=sum(k for _, k in per[:n]) / sum(s for s, _ in per[:n]), ratio=1.0,
                             equal=n, prefill=ms(base["prefill"][:n]), step=ms(base["steps"]),
                             waste=1 - base["tokens"] / base["row_steps"],
                             pad=1 - base["ptoks"] / base["slots"]))
            continue
        trials = []
        for _ in range(args.repeats):  # short runs: take the median of a few against VM noise
            texts, secs, _ = run(backend, rec, convs[:n], sampling, b, one_by_one=False)
            trials.append((secs, texts, rec.tokens, list(rec.prefill), list(rec.steps), rec.row_steps,
                           rec.prompt_tokens, rec.prompt_slots))
        trials.sort(key=lambda x: x[0])
        secs, texts, tokens, prefill, steps, row_steps, ptoks, slots = trials[len(trials) // 2]
        rows.append(dict(b=b, n=n, secs=secs, tokens=tokens, tps=tokens / secs,
                         ratio=(tokens / secs) / base_tps,
                         equal=sum(x == y for x, y in zip(texts, base_texts[:n])),
                         prefill=ms(prefill), step=ms(steps),
                         waste=1 - tokens / row_steps, pad=1 - ptoks / slots,
                         spread=f"{trials[0][0]:.2f}-{trials[-1][0]:.2f}s"))
        rows[-1]["base_tps"] = base_tps

    print()
    print(f"{'batch':>5} {'prompts':>7} {'seconds':>8} {'tokens':>7} {'tok/s':>7} {'vs batch 1':>10} "
          f"{'= batch 1':>9} {'prefill ms':>10} {'step ms':>8} {'dead rows':>9} {'prompt pad':>10}  "
          f"{'range'}")
    for r in rows:
        print(f"{r['b']:>5} {r['n']:>7} {r['secs']:>8.2f} {r['tokens']:>7} {r['tps']:>7.1f} "
              f"{r['ratio']:>9.2f}x {r['equal']:>4}/{r['n']:<4} {r['prefill']:>10} {r['step']:>8} "
              f"{r['waste']:>8.1%} {r['pad']:>10.1%}  {r.get('spread', '')}")
    print("  vs batch 1: tokens/s divided by the batch-1 tokens/s over the same prompts, this run")
    print("  = batch 1: greedy outputs identical to the one-at-a-time outputs")
    print("  prefill/step ms: median time of a join's prefill pass and of each decode step")
    print("  dead rows: share of computed row-steps spent on rows that had already finished (they ride")
    print("    along until enough slots are free to repay compacting the cache)")
    print("  prompt pad: share of prompt positions that were left padding")
    print(f"  range: fastest-slowest of the {args.repeats} batched runs (the median is shown)")

    target = next((r for r in rows if r["b"] == TARGET_BATCH), None)
    print()
    if target is None:
        print(f"target: batch {TARGET_BATCH} not measured (add it to --batch-sizes)")
    else:
        met = target["ratio"] >= TARGET_RATIO
        print(f"target: batch {TARGET_BATCH} tokens/s >= {TARGET_RATIO:.0f}x batch 1: "
              f"{'MET' if met else 'NOT MET'} ({target['tps']:.1f} vs {target['base_tps']:.1f} tok/s "
              f"= {target['ratio']:.2f}x)")
    load.stop()
    print(f"{load.describe()}; total {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
