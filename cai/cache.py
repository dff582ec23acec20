"""The content-addressed call cache: every model call, keyed by everything it depends on.

SQLite in WAL mode gives crash-safe commits and lets a reader (another run
sharing the cache) proceed while a writer commits. Keys are sha256 over the
canonical JSON of (model identity, call kind, messages, settings), so editing
one principle invalidates only the calls whose messages contain it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Iterable

from cai.errors import InputError, Problem

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    model TEXT NOT NULL,
    created REAL NOT NULL,
    usage TEXT
) WITHOUT ROWID
"""
_BATCH = 500  # stays under SQLite's bound-parameter limit


def call_key(model: str, kind: str, messages: list, settings: dict) -> str:
    payload = json.dumps([model, kind, messages, settings], sort_keys=True,
                         separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class CacheDamaged(InputError):
    """The cache file is not a readable SQLite database: say which file and what to do (exit 2)."""


class Cache:
    """get_many/put_many over one SQLite file; `enabled=False` makes it a no-op."""

    def __init__(self, path: str | Path, enabled: bool = True, readonly: bool = False):
        self.enabled = enabled
        self.readonly = readonly
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._opened = False  # opened on first use: a finished run never touches (or needs) the file
        self.preloaded: dict[str, object] = {}  # entries handed over with a block (Ray workers), read first
        self.preloaded_usage: dict[str, list] = {}
        self.found_usage: dict[str, list] = {}  # [input, output] tokens of the last get_many's entries, where known
        self._usage_column = True

    def _conn(self) -> sqlite3.Connection | None:
        if not self._opened:
            self._opened = True
            try:
                self._db = self._open()
            except sqlite3.DatabaseError as exc:
                raise self.damaged(exc) from None
        return self._db

    def damaged(self, exc: BaseException) -> "CacheDamaged":
        return CacheDamaged([Problem(str(self.path), None, "", f"the call cache cannot be read ({exc}): move it "
                                     "aside (it only saves model calls) or run with --no-cache")])

    def _open(self) -> sqlite3.Connection | None:
        if not self.enabled:
            return None
        if self.readonly:
            # For --plan: look, never create or write. A missing cache reads as empty.
            if not self.path.exists():
                return None
            # A cleanly closed cache has no WAL: read the file as immutable, which creates no
            # -wal/-shm files beside it. After a killed run the WAL holds committed calls: read it.
            wal = self.path.with_name(self.path.name + "-wal").exists()
            mode = "mode=ro" if wal else "immutable=1"
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?{mode}", uri=True, timeout=60)
            db.execute("SELECT 1 FROM calls LIMIT 1").fetchall()
            self._usage_column = "usage" in {row[1] for row in db.execute("PRAGMA table_info(calls)")}
            return db
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL keeps WAL commits durable across a killed process (not power loss),
        # which is the crash the resume contract is about.
        db.execute("PRAGMA synchronous=NORMAL")
        # Random sha256 keys dirty a random page per insert; checkpointing every
        # 1000 pages (the default) made inserts twice as slow at 100k examples.
        db.execute("PRAGMA wal_autocheckpoint=10000")
        db.execute(_SCHEMA)
        if "usage" not in {row[1] for row in db.execute("PRAGMA table_info(calls)")}:
            db.execute("ALTER TABLE calls ADD COLUMN usage TEXT")  # a cache made before tokens were kept
        return db

    def get_many(self, keys: Iterable[str]) -> dict[str, object]:
        keys = list(dict.fromkeys(keys))
        found = {k: self.preloaded[k] for k in keys if k in self.preloaded}
        self.found_usage = {k: self.preloaded_usage[k] for k in found if k in self.preloaded_usage}
        keys = [k for k in keys if k not in found]
        if not keys or not self._conn():
            return found
        usage = "usage" if self._usage_column else "NULL"
        try:
            for i in range(0, len(keys), _BATCH):
                part = keys[i:i + _BATCH]
                marks = ",".join("?" * len(part))
                for key, value, used in self._db.execute(
                    f"SELECT key, value, {usage} FROM calls WHERE key IN ({marks})", part
                ):
                    found[key] = json.loads(value)
                    if used:
                        self.found_usage[key] = json.loads(used)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # locked, I/O: not damage
                raise
            raise self.damaged(exc) from None
        return found

    def put_many(self, items: Iterable[tuple]) -> None:
        """Store (key, model, value) or (key, model, value, [input, output] tokens) rows in one transaction."""
        if self.readonly or not self._conn():
            return
        now = time.time()
        rows = [(k, json.dumps(v, ensure_ascii=False), m, now, json.dumps(u[0]) if u and u[0] else None)
                for k, m, v, *u in items]
        if not rows:
            return
        self._db.execute("BEGIN")
        self._db.executemany(
            "INSERT OR REPLACE INTO calls (key, value, model, created, usage) VALUES (?, ?, ?, ?, ?)", rows
        )
        self._db.execute("COMMIT")

    def usage_by_model(self) -> dict[str, tuple[int, int]]:
        """model -> (input, output) tokens of every call stored with its usage (a budget's spent so far)."""
        if not self._conn() or not self._usage_column:
            return {}
        rows = self._db.execute("SELECT model, SUM(json_extract(usage, '$[0]')), SUM(json_extract(usage, '$[1]')) "
                                "FROM calls WHERE usage IS NOT NULL GROUP BY model")
        return {m: (int(i or 0), int(o or 0)) for m, i, o in rows}

    def delete_many(self, keys: Iterable[str]) -> None:
        """Drop entries (a Ray worker's spool, once the driver's cache holds them)."""
        keys = list(keys)
        if self.readonly or not keys or not self._conn():
            return
        self._db.execute("BEGIN")
        for i in range(0, len(keys), _BATCH):
            part = keys[i:i + _BATCH]
            self._db.execute(f"DELETE FROM calls WHERE key IN ({','.join('?' * len(part))})", part)
        self._db.execute("COMMIT")

    def close(self) -> None:
        if self._db:
            self._db.close()
            self._db = None


class CachedBackend:
    """Any backend behind the call cache (in the spirit of lm-evaluation-harness's CachingLM).

    Answers come from the cache when their key is there; the rest go to the
    backend as one batch (or in slices of `commit_every`, each committed as it
    finishes, so an interrupt loses at most one slice). A backend that
    `streams_results` (an API client) has each answer committed as it lands, so
    a kill loses only requests still in flight. Failures are returned but never
    cached, so the next run retries them. `calls` and `hits` count what was
    computed and what was found; progress counts hits up front. `hit_log` and
    `new_log`, when set to dicts, collect found and computed entries (key ->
    value): what a Ray block carries out and brings back (cai/ray_engine.py).
    """

    def __init__(self, backend, cache: Cache, commit_every: int | None = None):
        self.backend, self.cache, self.commit_every = backend, cache, commit_every
        self.identity = backend.identity
        self.supports_logprobs = getattr(backend, "supports_logprobs", True)
        self.streams = getattr(backend, "streams_results", False)
        self.calls = self.hits = self.failed = 0
        # Tokens of computed calls, and of cached ones found again (saved), as the backend counted them.
        self.tokens: Counter = Counter()
        self.hit_log: dict | None = None  # key -> (value, usage)
        self.new_log: dict | None = None

    def _through(self, keys: list[str], width: int, compute, progress) -> list:
        from cai.backends import CallFailed

        found = self.cache.get_many(keys)
        known = self.cache.found_usage
        missing = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(keys) - len(missing)
        for k in keys:
            if k in found and known.get(k):
                self.tokens["saved_input"] += known[k][0]
                self.tokens["saved_output"] += known[k][1]
        if self.hit_log is not None:
            self.hit_log.update({k: (v, known.get(k)) for k, v in found.items()})
        if progress and len(keys) > len(missing):
            progress((len(keys) - len(missing)) * width)
        step = self.commit_every or max(len(missing), 1)
        for start in range(0, len(missing), step):
            part = missing[start:start + step]
            stored: dict[str, list | None] = {}

            def landed(j: int, value, usage=None, part=part, stored=stored) -> None:
                if not isinstance(value, CallFailed):
                    self.cache.put_many([(keys[part[j]], self.identity, value, usage)])
                    stored[keys[part[j]]] = usage

            outs = compute(part, progress, landed if self.streams else None)
            counted = list(getattr(self.backend, "usage", None) or [])
            counted = counted if len(counted) == len(part) else [None] * len(part)
            new = {keys[i]: out for i, out in zip(part, outs)}
            usage = {keys[i]: stored.get(keys[i]) or u for i, u in zip(part, counted)}
            self.calls += len(part)
            self.failed += sum(isinstance(v, CallFailed) for v in new.values())
            kept = {k: v for k, v in new.items() if not isinstance(v, CallFailed)}
            for k in kept:
                if usage[k]:
                    self.tokens["input"] += usage[k][0]
                    self.tokens["output"] += usage[k][1]
            self.cache.put_many((k, self.identity, v, usage[k]) for k, v in kept.items() if k not in stored)
            if self.new_log is not None:
                self.new_log.update({k: (v, usage[k]) for k, v in kept.items()})
            found.update(new)
        return [found[k] for k in keys]

    @staticmethod
    def _streamed(on_result) -> dict:
        return {"on_result": on_result} if on_result else {}

    def chat(self, conversations, sampling, progress=None) -> list:
        keys = [call_key(self.identity, "chat", c, s.key()) for c, s in zip(conversations, sampling)]
        return self._through(keys, 1, lambda part, prog, landed: self.backend.chat(
            [conversations[i] for i in part], [sampling[i] for i in part], progress=prog,
            **self._streamed(landed)), progress)

    def choice_logprobs(self, conversations, choices, progress=None) -> list:
        keys = [call_key(self.identity, "choices", c, {"choices": list(choices)}) for c in conversations]
        return self._through(keys, len(choices), lambda part, prog, landed: self.backend.choice_logprobs(
            [conversations[i] for i in part], choices, progress=prog, **self._streamed(landed)), progress)

    @property
    def stats(self) -> dict:
        return dict(getattr(self.backend, "stats", {}) or {})

    @property
    def load_seconds(self) -> float:
        """Time a lazy backend spent loading its model inside these calls."""
        return getattr(self.backend, "load_seconds", 0.0)

    def close(self) -> None:
        if hasattr(self.backend, "close"):
            self.backend.close()
