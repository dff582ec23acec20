"""How close `cai generate --plan`'s token estimate is to what the run then spends.

    python bench/token_estimate.py [--limit 16] [--feedback]

The shipped default pipeline on the embedded model (transformers, CPU), into a
fresh folder: first `--plan` (no model loaded), then the run itself; prints
planned and spent input/output tokens by stage and their ratio. The plan
assumes every reply runs to its stage's max_new_tokens, so its output figure
is an upper bound; input follows from it (later turns carry earlier replies).

Target: actual / estimate within 0.85-1.15 for the total.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import ForeignLoad  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--feedback", action="store_true")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="cai-tokens-")) / "run"
    cmd = [sys.executable, "-m", "cai", "generate", "--limit", str(args.limit), "--out", str(out),
           *(["--feedback"] if args.feedback else [])]
    load = ForeignLoad().start()
    planned = json.loads(subprocess.run(cmd + ["--plan"], check=True, capture_output=True, text=True).stdout)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    load.stop()
    spent = json.loads((out / "run.json").read_text())["tokens"]
    print(f"{args.limit} prompts, default pipeline{' + feedback' if args.feedback else ''}, embedded model; run {seconds:.0f} s")
    print(f"{'stage':<10}{'planned in':>12}{'spent in':>10}{'ratio':>7}{'planned out':>13}{'spent out':>11}{'ratio':>7}")
    rows = {**{k: (planned["tokens"]["stages"][k], v) for k, v in spent["stages"].items()},
            "total": (planned["tokens"]["total"], spent["total"])}
    for name, (p, s) in rows.items():
        ri = s["input"] / p["input"] if p["input"] else float("nan")
        ro = s["output"] / p["output"] if p["output"] else float("nan")
        print(f"{name:<10}{p['input']:>12}{s['input']:>10}{ri:>7.2f}{p['output']:>13}{s['output']:>11}{ro:>7.2f}")
    total = (spent["total"]["input"] + spent["total"]["output"]) / (
        planned["tokens"]["total"]["input"] + planned["tokens"]["total"]["output"])
    print(f"all tokens, actual / estimate: {total:.2f} (target 0.85-1.15)")
    print(load.describe())


if __name__ == "__main__":
    main()
