"""How `cai review` pages through a large run: the server's index against reading every record per page.

    python bench/review_scale.py [--records 200000]

Writes a synthetic run (records shaped like generate's: 2 rounds, AI feedback
with one judged pair, 10% flagged; shards of 10k), starts the review server
in-process and times, over HTTP: the first page (which builds the index),
then warm pages: the list, a filtered list (flag + principle), a deep page,
a record page, a search. The baseline is what a server without the index
pays for any filtered page: RecordStore.current over every record (parse
all, keep the latest per id), then the filter. Also the resident memory the
index takes.

Target: a warm filtered page at least 10x faster than the baseline, and the
index under 1 KiB per record.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import ForeignLoad  # noqa: E402

from cai.records import RecordStore  # noqa: E402
from cai.review import server  # noqa: E402

FP = "b" * 16


def record(i: int) -> dict:
    rounds = [{"round": r, "principle_id": f"principle-{(i + r) % 16}", "critique_request": "Critique it. " * 5,
               "critique": f"The answer {i} has a problem in round {r}. " * 6, "revision_request": "Revise it. " * 5,
               "revision": f"A revised answer {i} for round {r}. " * 8,
               "critique_problem": "empty_critique" if i % 10 == 0 and r == 1 else None, "revision_problem": None}
              for r in (1, 2)]
    p = 0.5 + (i % 50) / 100
    return {"id": f"ex-{i:07d}", "prompt": f"Prompt number {i}: how do I do thing {i % 997}?", "category": f"cat-{i % 5}",
            "initial": f"An initial answer {i}. " * 10, "rounds": rounds, "final": rounds[-1]["revision"],
            "flags": ["empty_critique"] if i % 10 == 0 else [], "fingerprint": FP,
            "feedback": {"samples": [], "skipped": 0, "comparisons": [{
                "pair": "revision_vs_initial", "a": rounds[-1]["revision"], "b": "x", "p_a": p, "p_first": p,
                "p_second": p, "principle_ids": ["principle-1"], "per_principle": [], "malformed": 0,
                "position_consistent": i % 7 != 0}]}}


def write_run(root: Path, n: int) -> Path:
    (root / "records").mkdir(parents=True)
    for start in range(0, n, 10_000):
        with open(root / "records" / f"shard-{start // 10_000:06d}.jsonl", "w") as fh:
            fh.writelines(json.dumps(record(i)) + "\n" for i in range(start, min(n, start + 10_000)))
    (root / "run.json").write_text(json.dumps({"fingerprint": FP, "status": "complete",
                                               "config": {"feedback": {"enabled": True}}}))
    return root


def timed(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as resp:
        assert resp.status == 200
        resp.read()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    args = ap.parse_args()
    run = write_run(Path(tempfile.mkdtemp(prefix="cai-review-bench-")) / "run", args.records)
    load = ForeignLoad().start()

    proc, ready = psutil.Process(), threading.Event()
    rss_before = proc.memory_info().rss
    box = {}
    threading.Thread(target=server.serve, args=(run, "127.0.0.1", 0, "bench",
                                                lambda url, srv: (box.update(url=url, srv=srv), ready.set())),
                     daemon=True).start()
    start = time.perf_counter()
    ready.wait(1800)  # serve() builds the index before it listens
    url = box["url"]
    cold = time.perf_counter() - start
    index_mb = (proc.memory_info().rss - rss_before) / 2**20  # measured first: the baseline's garbage is reused

    start = time.perf_counter()
    found = [r for r in RecordStore(run / "records", readonly=True).current(FP)
             if "empty_critique" in r["flags"] and "principle-3" in {x["principle_id"] for x in r["rounds"]}]
    baseline = time.perf_counter() - start
    pages = {
        "list, page 1": url,
        "filtered (flag + principle)": url + "?flag=empty_critique&principle=principle-3",
        "list, page 1000": url + "?page=1000",
        "record page": url + "record?id=ex-0001234",
        "search 'thing 42?'": url + "?q=thing+42%3F",
    }
    print(f"{args.records} records, {len(list((run / 'records').iterdir()))} shards; "
          f"{len(found)} match the filter")
    print(f"baseline: every record read and filtered (RecordStore.current): {baseline:.2f} s")
    print(f"index built at start (scan of every shard): {cold:.2f} s; resident memory +{index_mb:.0f} MiB "
          f"({index_mb * 2**20 / args.records:.0f} bytes per record)")
    print(f"  {'page':<30} {'first':>9} {'again':>9}   baseline / first")
    for name, u in pages.items():
        first = timed(u)  # a new selection: filtered and counted (or searched) now
        again = min(timed(u) for _ in range(2))  # remembered until the records change
        print(f"  {name:<30} {first * 1000:6.1f} ms {again * 1000:6.1f} ms   {baseline / first:7.1f}x")
    box["srv"].shutdown()
    print(load.stop().describe())


if __name__ == "__main__":
    main()
