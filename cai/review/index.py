"""The review server's view of a run's records: a small in-memory index over the shards, read as they are.

Shards are append-only files written whole (cai.records), so each one is
scanned once, when it first appears; a reload picks up the shards a running
`cai generate` has added since. The index keeps only what the filters need
(principles, category, flags, judge bands, ties, rounds) and where the line
is, so a run of a million records pages and filters on the server; a record
is read from its shard when shown. Nothing here writes: a damaged line is
noted (its shard's records are left out) and left for `cai generate`, which
moves the shard aside and recomputes it.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter, OrderedDict
from pathlib import Path

from cai.config import FeedbackConfig
from cai.records import SHARD, of_another_run, parse_line

BANDS = ((0.6, "0.5-0.6"), (0.7, "0.6-0.7"), (0.8, "0.7-0.8"), (0.9, "0.8-0.9"), (1.01, "0.9-1.0"))
MEMO = 32
FACETS = ("flag", "principle", "category", "band", "tie", "inconsistent", "rounds")


def band(p_a: float | None) -> str:
    """The judge's confidence in its chosen answer, in bands of 0.1 ('malformed': no usable answer)."""
    if p_a is None:
        return "malformed"
    chosen = max(p_a, 1 - p_a)
    return next(name for top, name in BANDS if chosen < top)


# drawn: every round's principle; problem: "principle:reason" per bad round; judged: the judge's principles
FIELDS = (*FACETS, "drawn", "problem", "judged")
_POS = {name: i for i, name in enumerate(FIELDS)}
_SHARED: dict[tuple, tuple] = {}  # one copy of each distinct value tuple: a few hundred across a million records


def _one(values: tuple) -> tuple:
    return _SHARED.setdefault(values, values)


class Entry:
    """Where a record's line is, and the values the filters need (about 300 bytes with its id)."""
    __slots__ = ("id", "shard", "offset", "fingerprint", "values")

    def __init__(self, rec: dict, shard: str, offset: int, tie_threshold: float):
        intern = sys.intern
        self.id, self.shard, self.offset = rec["id"], shard, offset
        self.fingerprint = intern(str(rec.get("fingerprint")))
        comps = (rec.get("feedback") or {}).get("comparisons") or []
        ps = [c.get("p_a") for c in comps]
        rounds = rec.get("rounds") or ()
        drawn = tuple(intern(str(r.get("principle_id"))) for r in rounds)
        self.values = tuple(_one(v) for v in (
            tuple(intern(f) for f in rec.get("flags") or ()) or ("none",),
            tuple(dict.fromkeys(drawn)),
            (intern(str(rec.get("category"))),),
            tuple(sorted({band(p) for p in ps})),
            ("yes",) if any(p is not None and abs(p - 0.5) < tie_threshold for p in ps) else (),
            ("yes",) if any(not c.get("position_consistent", True) for c in comps) else (),
            (str(len(rounds)),),
            drawn,
            tuple(intern(f"{r.get('principle_id')}:{p}") for r in rounds
                  for p in (r.get("critique_problem"), r.get("revision_problem")) if p),
            tuple(dict.fromkeys(intern(str(p)) for c in comps for p in c.get("principle_ids") or ())),
        ))

    def get(self, name: str) -> tuple:
        return self.values[_POS[name]]

    @property
    def facets(self) -> dict[str, tuple]:
        return dict(zip(FIELDS, self.values))


def feedback_settings(run: dict) -> FeedbackConfig:
    """The run's judge settings (ties, confidence), or the defaults when run.json lacks or garbles them."""
    try:
        return FeedbackConfig.model_validate((run.get("config") or {}).get("feedback") or {})
    except (ValueError, AttributeError):  # pydantic's ValidationError is a ValueError
        return FeedbackConfig()


class RunIndex:
    """Current records of a run (run.json's fingerprint; the latest line per id), in shard order."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.records_dir = self.run_dir / "records"
        self._shards: dict[str, tuple[tuple, list[Entry]]] = {}  # name -> ((inode, size), entries)
        self.damaged: dict[str, dict] = {}  # shard -> {shard, line, error}
        self.current: list[Entry] = []
        self.by_id: dict[str, int] = {}
        self.run: dict = {}
        self._seen = None
        self._lock = threading.Lock()
        self._memo: OrderedDict = OrderedDict()  # recent selections and their counts, until the records change

    def _read_run(self) -> dict:
        try:
            run = json.loads((self.run_dir / "run.json").read_text(encoding="utf-8"))
            return run if isinstance(run, dict) else {}
        except (OSError, ValueError):  # being replaced right now: keep the last one read
            return self.run

    def refresh(self) -> None:
        """Scan shards that appeared (or were replaced) since the last call; recompute the current set if
        anything changed. A shard is known by name and inode: a generate that quarantines a damaged shard
        writes its replacement under the same name."""
        with self._lock:
            found = {}
            for p in self.records_dir.iterdir() if self.records_dir.is_dir() else ():
                if SHARD.match(p.name):
                    try:
                        st = p.stat()
                    except FileNotFoundError:  # moved aside right now
                        continue
                    found[p.name] = (st.st_ino, st.st_size)
            run = self._read_run()
            fingerprint = run.get("fingerprint")
            for name in set(self._shards) | set(self.damaged):
                known = self._shards[name][0] if name in self._shards else self.damaged[name]["ident"]
                if found.get(name) != known:  # gone or replaced
                    self._shards.pop(name, None)
                    self.damaged.pop(name, None)
            for name, ident in sorted(found.items()):
                if name not in self._shards and name not in self.damaged:
                    self._scan(name, ident, feedback_settings(run).tie_threshold, fingerprint)
            names = sorted(found)
            seen = (tuple(sorted(found.items())), fingerprint)
            self.run = run
            if seen != self._seen:
                self._seen = seen
                self._settle(fingerprint, names)
                self._memo.clear()

    def _scan(self, name: str, ident: tuple, tie: float, fingerprint: str | None) -> None:
        found, offset, mark = [], 0, (fingerprint or "").encode()
        with open(self.records_dir / name, "rb") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        found.append(Entry(parse_line(line), name, offset, tie))
                    except ValueError as exc:
                        # generate's rule (RecordStore.current): another run's line is skipped unread;
                        # any other bad line damages the shard.
                        if not (mark and of_another_run(line, mark)):
                            self.damaged[name] = {"shard": name, "line": n, "ident": ident,
                                                  "error": f"{type(exc).__name__}: {exc}"}
                            return
                offset += len(line)
        self._shards[name] = (ident, found)

    def _settle(self, fingerprint: str | None, names: list[str]) -> None:
        latest: dict[str, Entry] = {}
        for name in names:
            for e in self._shards.get(name, (None, ()))[1]:
                if fingerprint is None or e.fingerprint == fingerprint:
                    latest.pop(e.id, None)  # the latest line wins, and takes its place in the order
                    latest[e.id] = e
        self.current = list(latest.values())
        self.by_id = {e.id: i for i, e in enumerate(self.current)}

    def load(self, entry: Entry) -> dict:
        with open(self.records_dir / entry.shard, "rb") as fh:
            fh.seek(entry.offset)
            return json.loads(fh.readline())

    def get(self, record_id: str) -> tuple[int, dict] | None:
        i = self.by_id.get(record_id)
        return None if i is None else (i, self.load(self.current[i]))

    def _remember(self, key: tuple, make):
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        value = self._memo[key] = make()
        if len(self._memo) > MEMO:
            self._memo.popitem(last=False)
        return value

    def select(self, filters: dict[str, str], query: str = "") -> list[Entry]:
        """Entries matching every facet filter and a text search (remembered: paging re-asks the same)."""
        key = ("select", tuple(sorted(filters.items())), query)
        return self._remember(key, lambda: self._select(filters, query))

    def counts(self, filters: dict[str, str], query: str = "") -> dict[str, Counter]:
        """How many of the selected entries have each facet value."""
        key = ("counts", tuple(sorted(filters.items())), query)
        return self._remember(key, lambda: facet_counts(self.select(filters, query)))

    def _select(self, filters: dict[str, str], query: str) -> list[Entry]:
        out = self.current
        for key, value in filters.items():
            i = _POS[key]
            out = [e for e in out if value in e.values[i]]
        if query:
            out = self._search(out, query)
        return out

    def _search(self, entries: list[Entry], query: str) -> list[Entry]:
        """Case-insensitive search in the prompt and every answer (initial, revisions, samples)."""
        needle = query.lower()
        raw = json.dumps(needle, ensure_ascii=False)[1:-1].encode()  # as the text appears inside a line
        found, handles = set(), {}
        try:
            for e in sorted(entries, key=lambda e: (e.shard, e.offset)):  # each shard read forwards, once
                fh = handles.get(e.shard) or handles.setdefault(e.shard, open(self.records_dir / e.shard, "rb"))
                fh.seek(e.offset)
                line = fh.readline()
                hay = line.lower() if needle.isascii() else line.decode("utf-8").lower().encode()
                if raw in hay and self._matches(json.loads(line), needle):
                    found.add(id(e))
        finally:
            for fh in handles.values():
                fh.close()
        return [e for e in entries if id(e) in found]

    @staticmethod
    def _matches(rec: dict, needle: str) -> bool:
        texts = [rec.get("prompt"), rec.get("initial"), rec.get("final"),
                 *(r.get("revision") for r in rec.get("rounds") or ()),
                 *((rec.get("feedback") or {}).get("samples") or ())]
        return any(needle in (t or "").lower() for t in texts)


def facet_counts(entries: list[Entry]) -> dict[str, Counter]:
    counts = [Counter() for _ in FACETS]
    for e in entries:
        for c, v in zip(counts, e.values):  # FACETS lead FIELDS
            c.update(v)
    return dict(zip(FACETS, counts))
