"""Why batched generation scales as it does on CPU: per-step costs and alternatives, measured.

    python bench/batching_profile.py [--sections scaling,generate,variants] [--max-new-tokens 64]

Prototypes only: nothing here changes cai. Sections:

  scaling   raw decode step (model forward with a KV cache + argmax, no generate())
            for batch 1..32 at 2 and 1 threads, and the effective weight bandwidth
            at batch 1 (a decode step reads every weight once).
  generate  where a batched generate() call spends its time: prefill, decode steps,
            generate()'s own per-step overhead over the raw forward, top ops (torch
            profiler) for a few steps at batch 1 and 16.
  variants  end-to-end tokens/s at batch 1 (one conversation per call) and batch 16
            over the same prompts, and their ratio, for alternatives: SDPA (default)
            vs eager attention, dynamic vs static KV cache, MKL vs oneDNN-packed
            linear layers, float32 vs bfloat16, and 1 vs 2 torch threads for batch 1.
  prefix    (not run by default) SL-CAI critique-shaped conversations (~414 prompt
            tokens, of which the system prompt + few-shot turns, ~290, are the same
            for every row): batch 1 vs batch 16, plain and with the shared prefix's
            KV cache computed once and reused by every row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import ForeignLoad  # noqa: E402
from batching import GenerateRecorder, load_prompts  # noqa: E402

from cai import backends  # noqa: E402
from cai.backends import Sampling  # noqa: E402


def median(xs):
    return statistics.median(xs) if xs else float("nan")


@torch.inference_mode()
def raw_steps(model, rows, pad_id, b, n=16):
    """Median seconds of a decode step (forward of 1 token per row with a KV cache, then argmax)."""
    rows = (rows * ((b + len(rows) - 1) // len(rows)))[:b]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    times = []
    for _ in range(n):
        mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype)], 1)
        t = time.perf_counter()
        out = model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        times.append(time.perf_counter() - t)
    return median(times[2:])


def scaling(backend, rows):
    model = backend.model
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"\n== scaling: raw decode step (no generate()), {weight_bytes / 2**20:.0f} MiB of weights ==")
    print(f"{'threads':>7} {'batch':>5} {'step ms':>8} {'tok/s':>7} {'vs batch 1':>10}")
    start = torch.get_num_threads()
    for threads in (start, 1) if start > 1 else (1,):
        torch.set_num_threads(threads)
        one = None
        for b in (1, 2, 4, 8, 16, 32):
            s = raw_steps(model, rows, backend.tokenizer.pad_token_id, b)
            one = one or s
            print(f"{threads:>7} {b:>5} {s * 1000:>8.1f} {b / s:>7.0f} {(b / s) / (1 / one):>9.2f}x")
            if b == 1:
                print(f"{'':>14} batch 1 reads the weights at {weight_bytes / s / 1e9:.1f} GB/s")
    torch.set_num_threads(start)


def generate_breakdown(backend, convs, max_new):
    rec = GenerateRecorder(backend) if not isinstance(backend.model.generate, GenerateRecorder) \
        else backend.model.generate
    s = Sampling(max_new_tokens=max_new, repetition_penalty=1.1)
    print(f"\n== generate(): where the time goes, max_new_tokens={max_new} ==")
    for b in (1, 16):
        backend.batch_size = b
        rec.reset()
        t = time.perf_counter()
        if b == 1:  # 8 prompts: per-step figures do not need more
            for c in convs[:8]:
                backend.chat([c], [s])
        else:
            backend.chat(convs[:16], [s] * 16)
        total = time.perf_counter() - t
        pre, steps = sum(rec.prefill), sum(rec.steps)
        raw = raw_steps(backend.model, [backend._encode(c) for c in convs[:16]],
                        backend.tokenizer.pad_token_id, b)
        print(f"batch {b:>2} ({8 if b == 1 else 16} prompts): total {total:6.2f}s = prefill {pre:5.2f}s ({pre / total:4.0%}) + "
              f"{len(rec.steps)} decode steps {steps:6.2f}s (median {median(rec.steps) * 1000:5.1f} ms; "
              f"raw forward {raw * 1000:5.1f} ms) + other {total - pre - steps:4.2f}s; "
              f"{rec.tokens} tokens, dead row-steps {1 - rec.tokens / rec.row_steps:.1%}, "
              f"prompt padding {1 - rec.prompt_tokens / rec.prompt_slots:.1%}")
    for b in (1, 16):
        backend.batch_size = b
        with torch.profiler.profile() as prof:
            backend.chat(convs[:b], [Sampling(max_new_tokens=8, repetition_penalty=1.1)] * b)
        print(f"\n-- torch profiler, batch {b}, prefill + 7 decode steps: top ops by self CPU --")
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)
        print("\n".join(line[:130] for line in table.splitlines()))


class OneDNNLinear(torch.nn.Module):
    """nn.Linear through oneDNN with its weight prepacked (torch.utils.mkldnn), any leading dims."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        from torch.utils import mkldnn

        self.inner = mkldnn.to_mkldnn(linear)
        self.out_features = linear.out_features

    def forward(self, x):
        y = self.inner(x.reshape(-1, x.shape[-1]).contiguous())
        return y.reshape(*x.shape[:-1], self.out_features)


def onednn_linears(model) -> None:
    """Swap every float32 nn.Linear (lm_head included) for OneDNNLinear, in place."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, OneDNNLinear(child))


def batch1(backend, convs, s, threads=None):
    """tokens/s at batch 1, one conversation per call."""
    rec = backend.model.generate
    backend.batch_size = 1
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    rec.reset()
    t = time.perf_counter()
    for c in convs:
        backend.chat([c], [s])
    one = rec.tokens / (time.perf_counter() - t)
    torch.set_num_threads(before)
    return one


def end_to_end(backend, convs, s, b, b1n):
    """(tokens/s at batch 1 over the first b1n prompts, tokens/s at batch b in one call)."""
    rec = backend.model.generate
    one = batch1(backend, convs[:b1n], s)
    backend.batch_size = b
    rec.reset()
    t = time.perf_counter()
    backend.chat(convs[:b], [s] * b)
    many = rec.tokens / (time.perf_counter() - t)
    return one, many


def variants(convs, max_new, n, b1n):
    print(f"\n== variants: end-to-end generate(), batch {n} over {n} prompts vs batch 1 over the "
          f"first {b1n} of them (batch-1 tokens/s barely depends on the prompt), "
          f"max_new_tokens={max_new} ==")
    print(f"{'variant':<34} {'b1 tok/s':>9} {f'b{n} tok/s':>10} {'ratio':>7}")
    cases = [
        ("float32, sdpa, dynamic cache", dict(dtype="float32"), {}, None),
        ("float32, sdpa, b1 at 1 thread", dict(dtype="float32"), {}, 1),
        ("float32, eager attention", dict(dtype="float32"), {"attn": "eager"}, None),
        ("float32, static cache", dict(dtype="float32"), {"cache_implementation": "static"}, None),
        ("float32, oneDNN-packed linears", dict(dtype="float32"), {"onednn": True}, None),
        ("bfloat16, sdpa, dynamic cache", dict(dtype="bfloat16"), {}, None),
    ]
    results = {}
    backend = None
    for name, opts, gen_extra, b1_threads in cases:
        if backend is None or backend.model.dtype != getattr(torch, opts["dtype"]):
            backend = backends.create("transformers", batch_size=1, **opts)
            GenerateRecorder(backend)
            backend.chat(convs[:2], [Sampling(max_new_tokens=4)] * 2)  # warm-up
        model = backend.model
        attn = gen_extra.get("attn")
        if attn:
            model.set_attn_implementation(attn)
        if gen_extra.get("onednn"):
            onednn_linears(model)  # permanent for this backend: keep it the last float32 case
            backend.chat(convs[:2], [Sampling(max_new_tokens=4)] * 2)  # warm-up
        inner = backend.model.generate.inner
        extra = {k: v for k, v in gen_extra.items() if k not in ("attn", "onednn")}
        if extra:
            backend.model.generate.inner = lambda *a, _i=inner, **k: _i(*a, **{**k, **extra})
        s = Sampling(max_new_tokens=max_new, repetition_penalty=1.1)
        if b1_threads:
            one = batch1(backend, convs[:b1n], s, threads=b1_threads)
            many = results["float32, sdpa, dynamic cache"][1]
        else:
            one, many = end_to_end(backend, convs, s, n, b1n)
        results[name] = (one, many)
        print(f"{name:<34} {one:>9.1f} {many:>10.1f} {many / one:>6.2f}x", flush=True)
        backend.model.generate.inner = inner
        if attn:
            model.set_attn_implementation("sdpa")


def prefix_sharing(n: int, b1n: int, max_new: int):
    """Critique-shaped conversations: batch 1 vs batch n, plain and with the shared prefix's KV reused."""
    import copy

    from batching import critique_conversations

    backend = backends.create("transformers", batch_size=1)
    model, pad = backend.model, backend.tokenizer.pad_token_id
    convs = critique_conversations([[{"role": "user", "content": p}] for p in load_prompts(n)])
    rows = [backend._encode(c) for c in convs]
    shared = 0
    while all(len(r) > shared and r[shared] == rows[0][shared] for r in rows):
        shared += 1
    prefix = rows[0][:shared]
    kw = dict(max_new_tokens=max_new, do_sample=False, temperature=None, top_p=None, top_k=None,
              repetition_penalty=1.1, pad_token_id=pad, eos_token_id=backend.tokenizer.eos_token_id)

    @torch.inference_mode()
    def plain(batch):
        ids, mask = backend._pad(batch)
        out = model.generate(input_ids=ids, attention_mask=mask, **kw)
        return out[:, ids.shape[1]:]

    @torch.inference_mode()
    def prefix_kv():
        return model(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values

    @torch.inference_mode()
    def shared_prefix(batch, kv):
        # [prefix | left padding of the rest | rest]: generate() derives positions from the mask,
        # so padding in the middle is fine; the prefix's KV is copied to every row.
        rest = [r[shared:] for r in batch]
        width = max(map(len, rest))
        ids = torch.tensor([prefix + [pad] * (width - len(r)) + r for r in rest])
        mask = torch.tensor([[1] * shared + [0] * (width - len(r)) + [1] * len(r) for r in rest])
        cache = copy.deepcopy(kv)
        cache.batch_repeat_interleave(len(batch))
        out = model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, **kw)
        return out[:, ids.shape[1]:]

    def count(out):
        end = {backend.tokenizer.eos_token_id, pad}
        total = 0
        for row in out.tolist():
            total += next((k + 1 for k, t in enumerate(row) if t in end), len(row))
        return total

    def timed(fn):
        t = time.perf_counter()
        outs = fn()
        return outs, time.perf_counter() - t

    shared_prefix(rows[:2], prefix_kv())  # warm-up
    plain(rows[:2])
    print(f"\n== prefix: critique-shaped conversations, median {statistics.median(map(len, rows)):.0f} "
          f"tokens, {shared} shared by all; max_new_tokens={max_new}; batch 1 over {b1n}, "
          f"batch {n} over {n} ==")
    kv, kv_s = timed(prefix_kv)
    print(f"prefix KV computed once: {kv_s:.2f}s")
    o1, t1 = timed(lambda: [plain([r]) for r in rows[:b1n]])
    p1, tp1 = timed(lambda: [shared_prefix([r], kv) for r in rows[:b1n]])
    on, tn = timed(lambda: plain(rows))
    pn, tpn = timed(lambda: shared_prefix(rows, kv))
    b1 = sum(count(o) for o in o1) / t1
    b1p = sum(count(o) for o in p1) / tp1
    same = sum(a.tolist() == b.tolist() for a, b in zip(o1, p1))
    print(f"{'variant':<34} {'b1 tok/s':>9} {f'b{n} tok/s':>10} {'ratio':>7}")
    print(f"{'plain (as the backend does)':<34} {b1:>9.1f} {count(on) / tn:>10.1f} {count(on) / tn / b1:>6.2f}x")
    print(f"{'shared prefix KV reused':<34} {b1p:>9.1f} {count(pn) / tpn:>10.1f} {count(pn) / tpn / b1p:>6.2f}x"
          f"   (batch {n}: {tn / tpn:.2f}x faster than plain; batch-1 outputs equal plain: {same}/{b1n})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="scaling,generate,variants")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=16, help="batch size and prompts for variants")
    ap.add_argument("--b1-prompts", type=int, default=6, help="prompts for the batch-1 runs of variants")
    args = ap.parse_args(argv)
    sections = args.sections.split(",")
    convs = [[{"role": "user", "content": p}] for p in load_prompts(max(32, args.prompts))]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    load = ForeignLoad().start()
    if "scaling" in sections or "generate" in sections:
        backend = backends.create("transformers", batch_size=1)
        GenerateRecorder(backend)
        backend.chat(convs[:2], [Sampling(max_new_tokens=4)] * 2)  # warm-up
        rows = [backend._encode(c) for c in convs]
        if "scaling" in sections:
            scaling(backend, rows)
        if "generate" in sections:
            generate_breakdown(backend, convs, args.max_new_tokens)
        del backend
    if "variants" in sections:
        variants(convs, args.max_new_tokens, args.prompts, args.b1_prompts)
    if "prefix" in sections:
        prefix_sharing(args.prompts, args.b1_prompts, 96)
    print(f"\n{load.stop().describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
