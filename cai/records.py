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
QUARANTINE = "quarantine"  # damaged shards, moved aside whole


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
        **({"kept": True} if example.get("kept") else {}),  # helpfulness data: answered, not revised
        **meta,
    }


def parse_line(line: bytes) -> dict:
    """One record line, or ValueError (JSONDecodeError, UnicodeDecodeError) when it is damaged."""
    rec = json.loads(line.decode("utf-8"))
    if not isinstance(rec, dict) or "id" not in rec:
        raise ValueError("not a record")
    return rec


def of_another_run(line: bytes, mark: bytes) -> bool:
    """A blank line, or a whole-looking one (every line we write is one JSON object and a newline) that
    lacks this run's fingerprint `mark`: readers skip it unread, so damage there is not this run's."""
    return not line.strip() or (line.startswith(b"{") and line.endswith(b"}\n") and mark not in line)


class RecordStore:
    """Shards of one run. A damaged line (a disk fault, a bad copy, a sync tool) sends its
    shard to records/quarantine/: its examples are then pending again and recomputed,
    mostly from the call cache. `readonly` (for --plan) notes damage but moves nothing."""

    def __init__(self, directory: str | Path, readonly: bool = False):
        self.dir = Path(directory)
        self.readonly = readonly
        self.quarantined: list[dict] = []  # {shard, line, error, moved_to}

    def shards(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        # A damaged shard still in place (readonly) is skipped; a moved one's name may be reused by the
        # next shard written, which must be read.
        damaged = {q["shard"] for q in self.quarantined if q["moved_to"] is None}
        return sorted(p for p in self.dir.iterdir() if SHARD.match(p.name) and p.name not in damaged)

    def sweep(self) -> None:
        """Remove temporary files left by a killed writer."""
        if self.dir.is_dir() and not self.readonly:
            for p in self.dir.glob(".shard-*.tmp"):
                p.unlink(missing_ok=True)

    def __iter__(self) -> Iterator[dict]:
        """Every record line of every shard (for tools and tests; the engine reads `current`)."""
        for shard in self.shards():
            with open(shard, encoding="utf-8") as fh:
                yield from (json.loads(line) for line in fh if line.strip())

    def _quarantine(self, shard: Path, line: int, exc: Exception) -> None:
        note = {"shard": shard.name, "line": line, "error": f"{type(exc).__name__}: {exc}", "moved_to": None}
        if not self.readonly:
            target = self.dir / QUARANTINE / shard.name
            target.parent.mkdir(exist_ok=True)
            n = 1
            while target.exists():  # an earlier quarantine of a shard with this name
                target, n = target.with_name(f"{shard.stem}.{n}{shard.suffix}"), n + 1
            os.replace(shard, target)
            fsync_dir(self.dir)
            note["moved_to"] = str(target.relative_to(self.dir.parent))
        self.quarantined.append(note)

    def current(self, fingerprint: str) -> Iterator[dict]:
        """Records made with this fingerprint, one per id (the latest wins)."""
        latest: dict[str, tuple[str, int]] = {}
        mark = fingerprint.encode()
        for shard in self.shards():
            found: dict[str, tuple[str, int]] = {}
            with open(shard, "rb") as fh:
                for n, line in enumerate(fh):
                    # Cheap prefilter: parse only lines that can carry this fingerprint, or that
                    # do not look whole.
                    if not of_another_run(line, mark):
                        try:
                            rec = parse_line(line)
                        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                            self._quarantine(shard, n + 1, exc)
                            found = {}
                            break
                        if rec.get("fingerprint") == fingerprint:
                            found[rec["id"]] = (shard.name, n)
            latest.update(found)
        wanted = set(latest.values())
        for shard in self.shards():
            with open(shard, encoding="utf-8") as fh:
                for n, line in enumerate(fh):
                    if (shard.name, n) in wanted:
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
