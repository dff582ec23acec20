"""Records: the durable truth of a run, one JSON line per prompt.

A record carries everything needed to rebuild the dataset and to trace a pair
back: the prompt, the initial answer, each round's principle, requests,
critique and revision, the flags that keep it out of the pairs, and the
identities (model, constitution hash) it was made with.

Shards are append-only and written whole: a temporary file, fsync, then a
hard link to its final name. A killed run leaves at most a stray temporary
file (ignored and swept), never a half shard, so resuming loses and
duplicates nothing.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from cai.runfiles import fsync_dir, shareable

SHARD = re.compile(r"^shard-(\d{6})\.jsonl$")


def new_record(example: dict, fingerprint: str, meta: dict) -> dict:
    return {
        "id": example["id"],
        "prompt": example["prompt"],
        "category": example.get("category"),
        "source": example.get("source"),
        "initial": None,
        "rounds": [],
        "final": None,
        "flags": [],
        "fingerprint": fingerprint,
        **meta,
    }


class RecordStore:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def shards(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if SHARD.match(p.name))

    def sweep(self) -> None:
        """Remove temporary files left by a killed writer."""
        if self.dir.is_dir():
            for p in self.dir.glob(".shard-*.tmp"):
                p.unlink(missing_ok=True)

    def __iter__(self) -> Iterator[dict]:
        for shard in self.shards():
            with open(shard, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield json.loads(line)

    def current(self, fingerprint: str) -> Iterator[dict]:
        """Records made with this fingerprint, one per id (the latest wins)."""
        latest: dict[str, tuple[int, int]] = {}
        for s, shard in enumerate(self.shards()):
            with open(shard, encoding="utf-8") as fh:
                for n, line in enumerate(fh):
                    # Cheap prefilter: only parse lines that can carry this fingerprint.
                    if fingerprint in line:
                        rec = json.loads(line)
                        if rec.get("fingerprint") == fingerprint:
                            latest[rec["id"]] = (s, n)
        wanted = {pos for pos in latest.values()}
        for s, shard in enumerate(self.shards()):
            with open(shard, encoding="utf-8") as fh:
                for n, line in enumerate(fh):
                    if (s, n) in wanted:
                        yield json.loads(line)

    def append(self, records: Iterable[dict]) -> Path | None:
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
        if not lines:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".shard-", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.writelines(lines)
                fh.flush()
                os.fsync(fh.fileno())
            shareable(tmp)
            while True:
                existing = self.shards()
                number = int(SHARD.match(existing[-1].name).group(1)) + 1 if existing else 0
                target = self.dir / f"shard-{number:06d}.jsonl"
                try:
                    os.link(tmp, target)  # fails if a concurrent writer took the name
                    break
                except FileExistsError:
                    continue
        finally:
            os.unlink(tmp)
        fsync_dir(self.dir)
        return target
