"""The Batch API backend against the online one, on the same calls: wall time, requests, cost.

    python bench/batch_api.py [--prompts 67] [--latency 0.05] [--concurrency 16]

Two loopback servers answer every request after --latency seconds: an online
chat-completions stub (tests/helpers.py `Stub`), taking --concurrency requests
at once, and a Batch API (tests/batch_server.py) that works through a batch's
lines one after another, as a provider's batch queue would. SL-CAI, 1 round:
3 calls per prompt (67 prompts: 201 calls). Prices: $2.50 / $10.00 per million
input / output tokens, 50 % off in batch. The point of batch is cost, not speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]
from _machine import ForeignLoad  # noqa: E402
from batch_server import BatchServer  # noqa: E402
from helpers import KEY, Stub, write_pipeline  # noqa: E402

PRICE = {"input_per_mtok": 2.5, "output_per_mtok": 10.0, "batch_discount": 0.5}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=67)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    os.environ["OPENAI_API_KEY"] = KEY
    from cai.config import load_pipeline
    from cai.generate import generate

    work = Path(tempfile.mkdtemp(prefix="cai-batch-bench-"))
    online, batch = Stub(model="m", latency=args.latency), BatchServer(model="m", latency=args.latency)
    rows = {}
    load = ForeignLoad().start()
    for name, url, extra in (("online", online.url, {}), ("batch", batch.url, {"batch": True, "batch_poll_seconds": 0.5})):
        pipeline = write_pipeline(work / name, n_prompts=args.prompts, backend="openai", model="m", base_url=url,
                                  rounds=1, concurrency=args.concurrency, price=PRICE, **extra)
        started = time.perf_counter()
        summary = generate(load_pipeline(pipeline))
        rows[name] = (time.perf_counter() - started, summary)
    load.stop()
    print(f"{args.prompts} prompts x 3 calls, {args.latency:g} s a request; online concurrency {args.concurrency}")
    print(f"{'backend':<8}{'wall s':>8}{'calls':>7}{'HTTP requests':>15}{'batches':>9}{'tokens in/out':>16}{'cost $':>10}")
    for name, (seconds, s) in rows.items():
        t, st = s["tokens"]["total"], s["backend_stats"]
        http = st["attempts"] if name == "online" else f"{st.get('batches_submitted', 0)} files"
        print(f"{name:<8}{seconds:>8.1f}{s['counts']['model_calls']:>7}{http:>15}{st.get('batches_submitted', 0):>9}"
              f"{t['input']:>9}/{t['output']:<6}{s['cost']['usd']:>10.4f}")
    on, off = rows["online"][1]["cost"]["usd"], rows["batch"][1]["cost"]["usd"]
    print(f"batch cost / online cost: {off / on:.2f} (the 50 % discount); batch wall / online wall: "
          f"{rows['batch'][0] / rows['online'][0]:.1f}x")
    same = json.dumps(rows["online"][1]["tokens"]["total"]) == json.dumps(rows["batch"][1]["tokens"]["total"])
    print(f"identical tokens counted both ways: {same}")
    print(load.describe())


if __name__ == "__main__":
    main()
