"""cai vs distilabel 1.5.3: the same one-round SL-CAI pipeline, same prompts, same model, same decoding.

    python bench/distilabel_vs_cai.py [--prompts 16] [--max-new-tokens 32] [--distilabel-python PATH]

Both sides run respond -> critique -> revise on the embedded SmolLM2-135M-Instruct
(the plain checkpoint cai converts from the shipped GGUF), transformers on CPU,
float32, greedy, repetition penalty 1.1, the same max_new_tokens per stage, no
system prompt, no few-shot turns, and for each prompt the same principle (cai's
draw for round 1, handed to distilabel as columns). The conversation is continued
the same way on both sides (prompt, answer, critique request, critique, revision
request). cai runs with its cache off in a fresh folder, so it computes every call.

Each side runs as its own process, as a user runs it (`python -m cai generate
PIPELINE` and a distilabel `Pipeline.run`), one after the other; the wall-clock
from process start to exit is the headline figure, the pipeline's own time
(cai: run.json total_seconds; distilabel: around Pipeline.run) is shown beside it.
Rows lost: prompts that come back without a final revision.

Target (issue): cai >= 2x faster wall-clock, and 0 rows lost where distilabel loses any.
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

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from _machine import ForeignLoad  # noqa: E402

PROMPT_FILES = [ROOT / "pipelines/prompts/red_team.jsonl", ROOT / "pipelines/prompts/benign.jsonl"]
CONSTITUTION = ROOT / "constitution/harmless.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repetition-penalty", type=float, default=1.1)
    ap.add_argument("--distilabel-python", default=os.environ.get(
        "DISTILABEL_PYTHON", str(ROOT / ".venv-distilabel" / "bin" / "python")),
        help="python of distilabel's venv (default: .venv-distilabel/ at the repository root, or $DISTILABEL_PYTHON)")
    args = ap.parse_args()

    from cai.config import PromptSource
    from cai.constitution import load_constitution
    from cai.critique import sample_principle
    from cai.models import embedded_checkpoint
    from cai.prompts import load_prompts

    examples = load_prompts([PromptSource(path=str(p)) for p in PROMPT_FILES], limit=args.prompts)
    constitution = load_constitution(CONSTITUTION)
    model = embedded_checkpoint()
    tokens = {s: args.max_new_tokens for s in ("respond", "critique", "revise")}
    rows = []
    for ex in examples:
        p = sample_principle(constitution.critique_principles, ex["id"], 1, 0)
        rows.append({"id": ex["id"], "prompt": ex["prompt"], "critique_request": p.critique, "revision_request": p.revision})

    tmp = Path(tempfile.mkdtemp(prefix="cai-bench-dl-"))
    with open(tmp / "prompts.jsonl", "w") as fh:
        for ex in examples:
            fh.write(json.dumps({"id": ex["id"], "prompt": ex["prompt"]}) + "\n")
    pipeline = {
        "name": "bench", "constitution": str(CONSTITUTION), "prompts": [str(tmp / "prompts.jsonl")],
        "policy": {"backend": "transformers", "model": "embedded", "options": {"batch_size": 32, "dtype": "float32"}},
        "rounds": 1, "few_shot": 0, "cache": False, "test_size": 0.0, "out": str(tmp / "cai-out"),
        "sampling": {s: {"max_new_tokens": n, "temperature": 0.0, "repetition_penalty": args.repetition_penalty}
                     for s, n in tokens.items()},
    }
    (tmp / "pipeline.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    spec = {"model": model.path, "max_new_tokens": tokens, "repetition_penalty": args.repetition_penalty, "rows": rows}
    (tmp / "distilabel-in.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DISTILABEL_CACHE_DIR": str(tmp / "distilabel-cache"),
           "TOKENIZERS_PARALLELISM": "false"}

    print(f"{len(rows)} prompts, 1 round, greedy, max_new_tokens {args.max_new_tokens} per stage, "
          f"repetition penalty {args.repetition_penalty}, model {model.identity}")
    load = ForeignLoad().start()
    t = time.perf_counter()
    dl = subprocess.run([args.distilabel_python, str(ROOT / "bench/_distilabel_side.py"), str(tmp / "distilabel-in.json"),
                         str(tmp / "distilabel-out.json")], env=env, capture_output=True, text=True)
    dl_wall = time.perf_counter() - t
    if dl.returncode != 0:
        sys.exit(f"distilabel side failed (exit {dl.returncode}):\n{dl.stderr[-3000:]}")
    t = time.perf_counter()
    ours = subprocess.run([sys.executable, "-m", "cai", "generate", str(tmp / "pipeline.yaml")], env=env,
                          capture_output=True, text=True)
    cai_wall = time.perf_counter() - t
    load.stop()
    if ours.returncode != 0:
        sys.exit(f"cai side failed (exit {ours.returncode}):\n{ours.stderr[-3000:]}")

    dl_out = json.loads((tmp / "distilabel-out.json").read_text())
    run_json = json.loads((tmp / "cai-out/run.json").read_text())
    from cai.records import RecordStore

    recs = {r["id"]: r for r in RecordStore(tmp / "cai-out/records").current(run_json["fingerprint"])}
    dl_rows = {r["id"]: r for r in dl_out["rows"]}
    cai_lost = sum(1 for r in rows if not (recs.get(r["id"]) or {}).get("final"))
    dl_lost = sum(1 for r in rows if not (dl_rows.get(r["id"]) or {}).get("revision"))
    same_initial = sum(1 for r in rows if r["id"] in recs and r["id"] in dl_rows
                       and (recs[r["id"]]["initial"] or "").strip() == (dl_rows[r["id"]]["initial"] or "").strip())
    same_revision = sum(1 for r in rows if r["id"] in recs and r["id"] in dl_rows and recs[r["id"]]["rounds"]
                        and recs[r["id"]]["rounds"][0]["revision_raw"].strip() == (dl_rows[r["id"]]["revision"] or "").strip())
    c = run_json["counts"]

    print(f"{'':<28}{'wall s':>9}{'pipeline s':>12}{'rows out':>10}{'lost':>6}")
    print(f"{'distilabel 1.5.3 (baseline)':<28}{dl_wall:>9.1f}{dl_out['seconds']:>12.1f}{len(dl_rows):>10}{dl_lost:>6}")
    print(f"{'cai generate':<28}{cai_wall:>9.1f}{run_json['timings']['total_seconds']:>12.1f}{len(recs):>10}{cai_lost:>6}")
    print(f"cai: {c['model_calls']} model calls, {c['pairs']} pairs, flagged {c['flagged'] or 'none'} "
          "(flagged records are kept with their reasons, not lost)")
    print(f"same greedy outputs on both sides: initial answers {same_initial}/{len(rows)}, "
          f"revisions {same_revision}/{len(rows)} (batched vs one-at-a-time padding can flip a greedy token)")
    ratio = dl_wall / cai_wall
    print(f"target: cai wall-clock >= 2x faster than distilabel: {'MET' if ratio >= 2 else 'NOT MET'} "
          f"({ratio:.2f}x; pipeline time alone {dl_out['seconds'] / run_json['timings']['total_seconds']:.2f}x)")
    print(f"target: cai loses 0 rows where distilabel loses any: "
          f"{'MET' if cai_lost == 0 else 'NOT MET'} (cai lost {cai_lost}, distilabel lost {dl_lost})")
    print(load.describe())


if __name__ == "__main__":
    main()
