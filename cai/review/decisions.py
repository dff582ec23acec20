"""Human review decisions: RUN/review.jsonl, and how a dataset build honours them.

A decision is one JSON line: who, when, the record (and pair, for a judged
pair of an AI-feedback record), the content hash of what the reviewer saw,
and accept / reject / edit (with an optional swap of chosen and rejected and
a note). Lines are only ever appended, under an flock on the file itself and
fsynced, so two tabs or two servers never interleave and a killed server
loses nothing. The latest line for an item applies. A decision whose hash no
longer matches the record (the constitution or model changed it) is stale:
counted, named, not applied.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

from cai.runfiles import fsync_dir

FILE = "review.jsonl"
KINDS = ("accept", "reject", "edit")
# The `reviewed` column: what a person did to a row that stayed in the dataset.
ACCEPTED, EDITED = "accepted", "edited"


def _digest(parts) -> str:
    return hashlib.sha256("\x1f".join(p or "" for p in parts).encode()).hexdigest()[:16]


def _side(comp: dict) -> str:
    """Which answer the judge prefers: a decision to swap or edit means nothing once that flips."""
    p = comp.get("p_a")
    return "?" if p is None else "a" if p > 0.5 else "b" if p < 0.5 else "="


def record_hash(rec: dict) -> str:
    """What a reviewer of a record read: prompt, initial answer, each round's principle, critique, revision,
    and which side the judge took in each of its pairs."""
    rounds = [x for r in rec.get("rounds") or [] for x in (r.get("principle_id"), r.get("critique"), r.get("revision"))]
    judged = [f"{c.get('pair')}:{_side(c)}" for c in (rec.get("feedback") or {}).get("comparisons") or ()]
    return _digest([rec.get("prompt"), rec.get("initial"), *rounds, rec.get("final"), *judged])


def pair_hash(rec: dict, comp: dict) -> str:
    return _digest([rec.get("prompt"), comp.get("pair"), comp.get("a"), comp.get("b"), _side(comp)])


def reviewer(name: str | None = None) -> str:
    if name:
        return name
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def append(run_dir: str | Path, entry: dict) -> dict:
    """Append one decision line under the file's own lock, fsynced; return the line as written."""
    path = Path(run_dir) / FILE
    new = not path.exists()
    line = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry}
    data = (json.dumps(line, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close, or by the kernel when the process dies
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        fsync_dir(path.parent)
    return line


def read(run_dir: str | Path) -> tuple[list[dict], list[str]]:
    """Every decision line in file order, and one problem line per unreadable one (skipped)."""
    path = Path(run_dir) / FILE
    lines, bad = [], []
    if not path.is_file():
        return lines, bad
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                d = _valid(json.loads(raw))
            except ValueError as exc:
                bad.append(f"{path}:{n}: skipped ({str(exc).splitlines()[0]})")
                continue
            lines.append(d)
    return lines, bad


def _valid(d) -> dict:
    """A decision line as the server writes it, or ValueError naming what is wrong (a hand-edited file)."""
    if not isinstance(d, dict) or not isinstance(d.get("record"), str) or d.get("decision") not in KINDS:
        raise ValueError("not a decision (record, decision accept/reject/edit)")
    if d.get("pair") is not None and not isinstance(d["pair"], str):
        raise ValueError("pair must be a string or null")
    if not isinstance(d.get("hash"), str):
        raise ValueError("no content hash")
    if not isinstance(d.get("swap", False), bool):
        raise ValueError("swap must be true or false")
    if d["decision"] == "edit" and not (isinstance(d.get("chosen"), str) and d["chosen"].strip()):
        raise ValueError("an edit needs its chosen text")
    return d


def item_key(record: str, pair: str | None = None) -> tuple[str, str | None]:
    return (record, pair or None)


class Review:
    """The decisions in force for a build: the latest line per item, checked against the content hash."""

    def __init__(self, lines: list[dict], problems: list[str] = ()):
        self.latest: dict[tuple, dict] = {}
        for seq, d in enumerate(lines):  # file order is decision order: the later line wins
            self.latest[item_key(d["record"], d.get("pair"))] = {**d, "seq": seq}
        self.problems = list(problems)
        self.stale: list[dict] = []
        self.rows: Counter = Counter()  # preference rows: accepted / edited / rejected
        self.sft: Counter = Counter()

    @classmethod
    def of(cls, run_dir: str | Path) -> "Review":
        return cls(*read(run_dir))

    def _check(self, key: tuple, current: str) -> dict | None:
        d = self.latest.get(key)
        if d is not None and d.get("hash") != current:
            self.stale.append({"record": key[0], "pair": key[1], "who": d.get("who"), "when": d.get("when")})
            return None
        return d

    def for_record(self, rec: dict) -> dict | None:
        return self._check(item_key(rec["id"]), record_hash(rec))

    def for_pair(self, rec: dict, comp: dict, record_decision: dict | None) -> dict | None:
        """The decision in force for one judged pair: its own or its record's, whichever came later."""
        own = self._check(item_key(rec["id"], comp["pair"]), pair_hash(rec, comp))
        if own is None or record_decision is None:
            return own or record_decision
        return own if own["seq"] > record_decision["seq"] else record_decision

    def counts(self) -> dict:
        """For run.json, the card and diff: rows a person accepted, edited (text or swap) or rejected."""
        out = {k: self.rows.get(k, 0) for k in (ACCEPTED, EDITED, "rejected")}
        sft = {k: self.sft.get(k, 0) for k in (ACCEPTED, EDITED, "rejected")}
        return {"reviewed": sum(out.values()), **out, "sft": {"reviewed": sum(sft.values()), **sft},
                "decisions": len(self.latest), "stale": len(self.stale),
                "stale_items": [s["record"] + (f" ({s['pair']})" if s["pair"] else "") for s in self.stale[:20]],
                "unreadable_lines": len(self.problems)}


def apply(d: dict | None, chosen: str, rejected: str) -> tuple[str, str, str | None] | None:
    """(chosen, rejected, reviewed) after a decision; None when it rejects the row."""
    if d is None:
        return chosen, rejected, None
    if d["decision"] == "reject":
        return None
    if d.get("swap"):
        chosen, rejected = rejected, chosen
    if d["decision"] == "edit" and d.get("chosen") is not None:
        chosen = d["chosen"]
    return chosen, rejected, EDITED if d["decision"] == "edit" or d.get("swap") else ACCEPTED


def review_warnings(counts: dict | None) -> list[str]:
    """run.json / console lines for decisions a build could not apply."""
    if not counts:
        return []
    lines = []
    if counts["stale"]:
        lines.append(f"{counts['stale']} review decisions are stale (the record changed after it was reviewed, "
                     f"e.g. by a constitution edit) and were not applied: {', '.join(counts['stale_items'])}"
                     + (" ..." if counts["stale"] > len(counts["stale_items"]) else "")
                     + "; review them again with `cai review`")
    if counts["unreadable_lines"]:
        lines.append(f"{counts['unreadable_lines']} lines of {FILE} could not be read and were skipped")
    return lines
