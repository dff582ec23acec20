"""Incremental regeneration: edit 1 of 16 principles, re-run into the same folder, count what is recomputed.

    python bench/incremental.py [--prompts 16] [--rounds 2] [--max-new-tokens 32] [--backend transformers|scripted]

A 16-principle constitution (the first 16 of constitution/harmless.yaml) and
--prompts prompts run once (cold cache). Then one principle's critique request is
edited (--edit ID; default: the principle drawn by the most rows) and the same
command runs again into the same folder: only the calls of rows that drew the
edited principle, from their first affected round on, should be recomputed
(principle draws are stable under edits, every call goes through the cache).
The baseline, measured in the same run: a full run of the edited constitution
into a fresh folder with the cache off.

Printed: calls and wall-clock of the incremental re-run beside the full run, the
share of rows that drew the edited principle, and the calls predicted from the
first run's records (2 x rounds-from-first-use per affected row).
Target (issue): recomputed calls / full-run calls ~= the share of rows that sampled it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from _machine import ForeignLoad  # noqa: E402

from cai.config import load_pipeline  # noqa: E402
from cai.backends.loading import load as load_backend  # noqa: E402
from cai.generate import generate  # noqa: E402
from cai.records import RecordStore  # noqa: E402

PROMPT_FILES = [ROOT / "pipelines/prompts/red_team.jsonl", ROOT / "pipelines/prompts/benign.jsonl"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--backend", default="transformers", choices=["transformers", "scripted"])
    ap.add_argument("--edit", default=None, help="principle id to edit (default: the one drawn by the most rows)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cai-bench-inc-"))
    doc = yaml.safe_load((ROOT / "constitution/harmless.yaml").read_text())
    doc["principles"] = [p for p in doc["principles"] if p.get("critique")][:16]
    doc.pop("few_shot", None)
    (tmp / "constitution.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    def pipeline(out: str, cache: bool) -> Path:
        spec = {"name": "bench-incremental", "constitution": "constitution.yaml",
                "prompts": [str(p) for p in PROMPT_FILES], "limit": args.prompts,
                "policy": {"backend": args.backend, "model": "embedded" if args.backend == "transformers" else "echo"},
                "rounds": args.rounds,
                "few_shot": 0, "cache": cache, "out": str(tmp / out),
                "sampling": {s: {"max_new_tokens": args.max_new_tokens, "repetition_penalty": 1.1}
                             for s in ("respond", "critique", "revise")}}
        path = tmp / f"{out}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    inc = pipeline("run", cache=True)
    full = pipeline("full", cache=False)
    backend = load_backend(load_pipeline(inc).policy)  # loaded once, shared by every run: model load is not what we measure
    load = ForeignLoad().start()

    def timed(path):
        t = time.perf_counter()
        summary = generate(load_pipeline(path), str(path), backend=backend)
        return summary, time.perf_counter() - t

    first, first_s = timed(inc)
    records = {r["id"]: r for r in RecordStore(tmp / "run/records").current(first["fingerprint"])}
    draws = {i: [x["principle_id"] for x in r["rounds"]] for i, r in records.items()}
    rows_per = Counter(p for d in draws.values() for p in set(d))
    edited = args.edit or rows_per.most_common(1)[0][0]
    for p in doc["principles"]:
        if p["id"] == edited:
            p["critique"] = "List every way the assistant's last reply could be misused, one short line each."
    (tmp / "constitution.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    users = [i for i, d in draws.items() if edited in d]
    predicted = sum(2 * (args.rounds - draws[i].index(edited)) for i in users)

    again, again_s = timed(inc)
    base, base_s = timed(full)
    load.stop()
    n = len(records)
    share = len(users) / n
    calls, full_calls = again["counts"]["model_calls"], base["counts"]["model_calls"]
    print(f"{n} prompts, {args.rounds} rounds, 16 principles, backend {args.backend}, "
          f"max_new_tokens {args.max_new_tokens}; edited '{edited}' (drawn by {len(users)}/{n} rows = {share:.1%}; "
          f"{rows_per[edited]} rows, {sum(d.count(edited) for d in draws.values())} of {n * args.rounds} draws)")
    print(f"{'':<34}{'model calls':>12}{'cache hits':>12}{'seconds':>10}")
    print(f"{'first run (cold)':<34}{first['counts']['model_calls']:>12}{first['counts']['cache_hits']:>12}{first_s:>10.1f}")
    print(f"{'full run, edited (baseline)':<34}{full_calls:>12}{base['counts']['cache_hits']:>12}{base_s:>10.1f}")
    print(f"{'incremental re-run, edited':<34}{calls:>12}{again['counts']['cache_hits']:>12}{again_s:>10.1f}")
    print(f"recomputed calls / full-run calls: {calls / full_calls:.1%} (share of rows that drew the principle: {share:.1%}; "
          f"calls predicted from the first run's draws: {predicted}, {'equal' if predicted == calls else 'DIFFERENT'})")
    print(f"wall-clock: incremental {again_s:.1f}s vs full {base_s:.1f}s = {base_s / max(again_s, 1e-9):.1f}x faster")
    ok = calls == predicted and calls / full_calls <= share + 1e-9
    print(f"target: recomputed share ~= share of rows that sampled it: {'MET' if ok else 'NOT MET'} "
          f"({calls / full_calls:.1%} <= {share:.1%}; below it because the answer and rounds before first use are reused)")
    print(load.describe())


if __name__ == "__main__":
    main()
