"""Engine overhead with an instant model: examples/s and memory, batched engine vs a naive loop.

    python bench/engine_overhead.py [--sizes 10000,100000] [--baseline 2000] [--profile N]

Runs the real `cai.engine.Engine` (SL-CAI with the harmlessness constitution,
2 rounds, 1 few-shot example as in pipelines/default.yaml, call cache on,
records in a temporary folder) with `ScriptedBackend`, which answers
instantly, so every second measured is the engine's own: call keys, the
SQLite cache, the SL-CAI bookkeeping, quality checks and record shards.

Baseline, in the same run: the same engine with chunk_size=1, i.e. the naive
loop that handles one example at a time: each stage call does its own cache
lookup and its own insert+commit, and every record is appended as its own
shard (temporary file, fsync, link).

Each measurement runs in a fresh subprocess so its peak RSS (getrusage) is its
own; "RSS growth" is that peak minus the RSS after imports and after the
synthetic prompts were built, so it is what the engine itself added. The
dataset build (`cai.dataset.build` over the run's records) is timed on its own
line, as is a resume pass (a second run over the same prompts, all done).

Targets (issue): >= 2,000 examples/s, and memory flat from 10k to 100k
examples (growth ratio 100k/10k printed; "flat" here means <= 1.5x for 10x
the examples).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import ForeignLoad  # noqa: E402

CONSTITUTION = ROOT / "constitution/harmless.yaml"
TARGET_RATE = 2000.0
FLAT = 1.5

_VERBS = ["fix", "clean", "store", "sell", "paint", "move", "repair", "organise", "test", "insure"]
_NOUNS = ["bicycle", "laptop", "garden shed", "old car", "kitchen knife", "bookshelf", "sofa",
          "roof gutter", "fish tank", "piano", "drone", "lawnmower", "passport", "bank card"]
_WHEN = ["before winter", "on a small budget", "without special tools", "when my landlord objects",
         "if I only have an hour", "while my neighbour is away", "for a school project",
         "after it got wet", "so nobody notices", "safely with kids around"]


def synthetic_examples(n: int) -> list[dict]:
    """n distinct prompts of 15-30 words, deterministic."""
    return [{
        "id": f"syn-{i:07d}",
        "prompt": (f"Question {i}: how should I {_VERBS[i % 10]} my {_NOUNS[(i // 10) % 14]} "
                   f"{_WHEN[(i // 140) % 10]}? Please explain the steps and what to watch out for, "
                   f"number {i * 7919 % 100003}."),
        "category": "benign" if i % 3 else "red-team",
        "source": "synthetic",
    } for i in range(n)]


def rss_mib() -> float:
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_engine(out: Path, chunk_size: int, few_shot: int | None, rounds: int):
    from cai.backends.scripted import ScriptedBackend
    from cai.config import PipelineConfig
    from cai.constitution import load_constitution
    from cai.engine import Engine

    config = PipelineConfig(name="bench", constitution=str(CONSTITUTION),
                            prompts=[{"path": "synthetic.jsonl"}], policy={"backend": "scripted", "model": "echo"},
                            chunk_size=chunk_size, rounds=rounds, few_shot=few_shot, cache=True,
                            out=str(out))
    return Engine(config, load_constitution(CONSTITUTION), ScriptedBackend(model="echo"), out)


def child(phase: str, n: int, out: Path, chunk_size: int, few_shot: int | None, rounds: int) -> dict:
    """One phase (run, resume or build) in this fresh process, over the run folder `out`."""
    from cai import dataset  # import everything before the memory baseline

    examples = synthetic_examples(n)
    engine = make_engine(out, chunk_size, few_shot, rounds)
    gc.collect()
    rss0, peak0 = rss_mib(), peak_mib()
    t = time.perf_counter()
    res: dict = {"phase": phase, "n": n, "chunk": chunk_size, "rss0": rss0, "peak_before": peak0}
    if phase == "build":
        counts = dataset.build(engine.current_records(examples), out / "build", 0.1)
        res.update(records=counts["records"], pairs=counts["pairs"])
    else:
        stats = engine.run(examples)
        shards = list((out / "records").glob("shard-*.jsonl"))
        res.update(model_calls=stats.model_calls, cache_hits=stats.cache_hits, resumed=stats.resumed,
                   stages=dict(stats.stage_seconds), shards=len(shards),
                   record_mib=sum(p.stat().st_size for p in shards) / 2**20,
                   cache_mib=sum(p.stat().st_size for p in out.glob("cache.sqlite*")) / 2**20)
    res["seconds"] = time.perf_counter() - t
    res["rate"] = n / res["seconds"]
    res["growth"] = peak_mib() - rss0
    return res


def profile(n: int, chunk_size: int, few_shot: int | None, rounds: int, tmp: str | None, top: int) -> None:
    import cProfile
    import pstats

    examples = synthetic_examples(n)
    with tempfile.TemporaryDirectory(prefix="cai-bench-", dir=tmp) as d:
        engine = make_engine(Path(d) / "run", chunk_size, few_shot, rounds)
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        engine.run(examples)
        prof.disable()
        print(f"profiled engine.run over {n} examples: {time.perf_counter() - t:.2f}s under cProfile")
        for key in ("tottime", "cumulative"):
            print(f"\n--- top {top} by {key} ---")
            pstats.Stats(prof).sort_stats(key).print_stats(top)


def spawn(args, phase: str, n: int, out: Path, chunk: int) -> dict:
    cmd = [sys.executable, __file__, "--child", phase, "--n", str(n), "--out", str(out),
           "--chunk-size", str(chunk), "--rounds", str(args.rounds), "--few-shot", str(args.few_shot)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"child failed ({' '.join(cmd)}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args, n: int, chunk: int, extra: bool) -> dict:
    """Run (and, with extra, resume and build) n examples in a temporary run folder."""
    with tempfile.TemporaryDirectory(prefix="cai-bench-", dir=args.tmp) as d:
        out = Path(d) / "run"
        res = spawn(args, "run", n, out, chunk)
        if extra and not args.no_resume:
            res["resume"] = spawn(args, "resume", n, out, chunk)
        if extra and not args.no_build:
            res["build"] = spawn(args, "build", n, out, chunk)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma list of example counts")
    ap.add_argument("--baseline", type=int, default=2000, help="examples for the naive loop (0: skip)")
    ap.add_argument("--chunk-size", type=int, default=256, help="engine chunk_size (pipeline default 256)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--few-shot", type=int, default=1, help="-1 for all (default 1, as in default.yaml)")
    ap.add_argument("--tmp", default=None, help="folder for the temporary run folders")
    ap.add_argument("--no-build", action="store_true", help="skip the dataset build timing")
    ap.add_argument("--no-resume", action="store_true", help="skip the resume-pass timing")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="instead: cProfile engine.run over N examples and print hot spots")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--child", choices=["run", "resume", "build"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    few_shot = None if args.few_shot < 0 else args.few_shot

    if args.child is not None:
        print(json.dumps(child(args.child, args.n, args.out, args.chunk_size, few_shot, args.rounds)))
        return 0
    if args.profile:
        profile(args.profile, args.chunk_size, few_shot, args.rounds, args.tmp, args.top)
        return 0

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    started = time.perf_counter()
    print(f"engine overhead: scripted backend, {CONSTITUTION.name}, rounds={args.rounds}, "
          f"few_shot={args.few_shot}, cache on, chunk_size={args.chunk_size}, {os.cpu_count()} CPUs")
    load = ForeignLoad().start()
    runs = []
    if args.baseline:
        runs.append(("naive loop (chunk_size=1)", measure(args, args.baseline, 1, False)))
    for n in sizes:
        runs.append((f"engine (chunk_size={args.chunk_size})",
                     measure(args, n, args.chunk_size, True)))

    print()
    print(f"{'run':<27} {'examples':>9} {'seconds':>8} {'examples/s':>11} {'RSS growth MiB':>15} "
          f"{'calls':>8} {'shards':>7} {'records MiB':>12} {'cache MiB':>10}")
    for name, r in runs:
        print(f"{name:<27} {r['n']:>9} {r['seconds']:>8.2f} {r['rate']:>11.0f} {r['growth']:>15.1f} "
              f"{r['model_calls']:>8} {r['shards']:>7} {r['record_mib']:>12.1f} {r['cache_mib']:>10.1f}")
    for name, r in runs:
        other = r["seconds"] - sum(r["stages"].values())
        parts = ", ".join(f"{k} {v:.2f}s" for k, v in r["stages"].items())
        print(f"  {name} {r['n']}: {parts}, records/other {other:.2f}s")

    print()
    engine_runs = [r for name, r in runs if r["chunk"] != 1]
    naive = next((r for name, r in runs if r["chunk"] == 1), None)
    for r in engine_runs:
        ok = r["rate"] >= TARGET_RATE
        line = (f"target >= {TARGET_RATE:.0f} examples/s at {r['n']}: {'MET' if ok else 'NOT MET'} "
                f"({r['rate']:.0f}/s)")
        if naive:
            line += f"; {r['rate'] / naive['rate']:.1f}x the naive loop ({naive['rate']:.0f}/s)"
        print(line)
    if len(engine_runs) >= 2:
        small, big = engine_runs[0], engine_runs[-1]
        ratio = big["growth"] / max(small["growth"], 1e-9)
        print(f"memory: peak RSS growth {big['growth']:.1f} MiB at {big['n']} vs {small['growth']:.1f} MiB "
              f"at {small['n']} = {ratio:.2f}x for {big['n'] / small['n']:.0f}x the examples: "
              f"{'FLAT' if ratio <= FLAT else 'NOT FLAT'} (flat = <= {FLAT}x)")
    for r in engine_runs:
        if "resume" in r:
            x = r["resume"]
            print(f"resume pass at {r['n']} (all {x['resumed']} done, {x['model_calls']} calls): "
                  f"{x['seconds']:.2f}s, peak RSS growth {x['growth']:.1f} MiB")
    for r in engine_runs:
        if "build" in r:
            x = r["build"]
            print(f"dataset build at {r['n']}: {x['seconds']:.2f}s ({x['records'] / x['seconds']:.0f} "
                  f"records/s, {x['pairs']} pairs), peak RSS growth {x['growth']:.1f} MiB")
    load.stop()
    print(f"{load.describe()}; total {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
