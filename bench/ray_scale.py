"""`--engine ray` against the local engine, on a loopback API with fixed latency: orchestration, not compute.

    python bench/ray_scale.py [--prompts 400] [--latency 0.4] [--concurrency 8]

A loopback OpenAI-compatible stub (tests/helpers.py `Stub`) answers every request
after --latency seconds, however many are in flight. Each node is given
--concurrency requests in flight (the run's budget is concurrency x nodes, shared
by its workers), so 2 nodes have twice the total concurrency of one. SL-CAI,
1 round: 3 calls per prompt. Arms, each on a fresh run folder:

  local        the local engine, concurrency C
  ray 1 node   a one-node ray.cluster_utils.Cluster, one worker, concurrency C
  ray 2 nodes  a two-node Cluster, two workers, concurrency 2C

Then the driver kill: the 2-node run is started as `cai generate` in a
subprocess, killed with SIGKILL once half the calls were made, and run again;
wasted = requests over both runs minus the calls the pipeline needs. Requests in
flight when the driver died never got their answer and are sent again; answered
ones are not (the second run makes exactly what the cache and spools lacked).

Targets: ray 2 nodes >= 1.8x ray 1 node; ray 1 node >= 0.8x local; 0 answered calls made again.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]
from _machine import ForeignLoad  # noqa: E402
from helpers import KEY, Stub, write_pipeline  # noqa: E402

STORE = 200 * 2**20  # Ray's default object store is 30 % of RAM per node: far more than blocks need
KEY_ENV = "CAI_BENCH_KEY"


def _run(pipeline: Path, **overrides) -> tuple[float, dict]:
    from cai.config import load_pipeline
    from cai.generate import generate

    started = time.perf_counter()
    summary = generate(load_pipeline(pipeline, **overrides))
    assert summary["status"] == "complete", summary.get("error")
    return time.perf_counter() - started, summary


def _cluster(nodes: int):
    from ray.cluster_utils import Cluster

    started = time.perf_counter()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": STORE})
    for _ in range(nodes - 1):
        c.add_node(num_cpus=1, object_store_memory=STORE)
    c.wait_for_nodes()
    return c, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=400)
    ap.add_argument("--latency", type=float, default=0.4)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    os.environ[KEY_ENV] = KEY
    os.environ.setdefault("CAI_SPOOL_DIR", tempfile.mkdtemp(prefix="cai-spool-"))
    work = Path(tempfile.mkdtemp(prefix="cai-ray-bench-"))
    stub = Stub(latency=args.latency)
    calls = 3 * args.prompts

    def pipeline(name: str, nodes: int, **fields) -> Path:
        return write_pipeline(work / name, n_prompts=args.prompts, backend="openai", model="stub-model",
                              base_url=stub.url, api_key_env=KEY_ENV, concurrency=args.concurrency * nodes,
                              rounds=1, **fields)

    load = ForeignLoad().start()
    rows = {}
    seconds, _ = _run(pipeline("local", 1))
    rows["local"] = (seconds, None, None)
    for nodes in (1, 2):
        cluster, boot = _cluster(nodes)
        try:
            ray = {"engine": "ray", "ray": {"address": cluster.address, "cpus_per_worker": 0.5}}
            seconds, summary = _run(pipeline(f"ray{nodes}", nodes, **ray))
            rows[f"ray {nodes} node{'s' * (nodes > 1)}"] = (seconds, boot, summary["engine"]["startup_seconds"])
            if nodes == 2:
                wasted = _kill_and_resume(pipeline("killed", 2, **ray), stub, calls)
        finally:
            cluster.shutdown()
    load.stop()

    rate = {k: args.prompts / v[0] for k, v in rows.items()}
    print(f"{args.prompts} prompts x 3 calls, latency {args.latency:g} s, concurrency {args.concurrency} per node")
    print(f"{'arm':<14}{'wall s':>9}{'examples/s':>12}{'cluster start s':>17}{'engine start s':>16}")
    for k, (seconds, boot, start) in rows.items():
        print(f"{k:<14}{seconds:>9.2f}{rate[k]:>12.1f}{'' if boot is None else f'{boot:.2f}':>17}"
              f"{'' if start is None else f'{start:.2f}':>16}")
    one, two, local = rate["ray 1 node"], rate["ray 2 nodes"], rate["local"]
    print(f"ray 2 nodes / ray 1 node: {two / one:.2f}x (target >= 1.8x)")
    print(f"ray 1 node / local:       {one / local:.2f}x (target >= 0.8x)")
    print(f"driver killed at half, then rerun: {json.dumps(wasted)}")
    print(load.describe(), "(Ray's own processes count as other processes here)")


def _kill_and_resume(pipeline: Path, stub: Stub, calls: int) -> dict:
    """Kill the driver (SIGKILL) once half the calls were made; run again; count requests."""
    from cai import spool
    from cai.config import load_pipeline

    before = stub.requests
    cmd = [sys.executable, "-m", "cai", "generate", str(pipeline)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while stub.requests - before < calls // 2:
        if first.poll() is not None:
            raise SystemExit("the driver finished before it could be killed: use more --prompts")
        time.sleep(0.01)
    in_flight = stub.in_flight
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(3)  # its workers die with it
    made_first = stub.requests - before
    kept = len(spool.stored(load_pipeline(pipeline).resolved_out()))  # answers that survived the kill
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    made_second = stub.requests - before - made_first
    return {"calls_needed": calls, "first_run_requests": made_first, "answers_kept": kept,
            "in_flight_at_kill": in_flight, "second_run_requests": made_second,
            "lost_in_flight": made_first - kept,  # sent, never answered to a live worker: sent again
            "answered_then_made_again": made_second - (calls - kept)}


if __name__ == "__main__":
    main()
