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
from pathlib import Path
from typing import Iterable

from cai.errors import InputError, Problem

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    model TEXT NOT NULL,
    created REAL NOT NULL
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
        return db

    def get_many(self, keys: Iterable[str]) -> dict[str, object]:
        if not self._conn():
            return {}
        keys = list(dict.fromkeys(keys))
        found: dict[str, object] = {}
        try:
            for i in range(0, len(keys), _BATCH):
                part = keys[i:i + _BATCH]
                marks = ",".join("?" * len(part))
                for key, value in self._db.execute(
                    f"SELECT key, value FROM calls WHERE key IN ({marks})", part
                ):
                    found[key] = json.loads(value)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # locked, I/O: not damage
                raise
            raise self.damaged(exc) from None
        return found

    def put_many(self, items: Iterable[tuple[str, str, object]]) -> None:
        """Store (key, model, value) rows in one transaction."""
        if self.readonly or not self._conn():
            return
        now = time.time()
        rows = [(k, json.dumps(v, ensure_ascii=False), m, now) for k, m, v in items]
        if not rows:
            return
        self._db.execute("BEGIN")
        self._db.executemany(
            "INSERT OR REPLACE INTO calls (key, value, model, created) VALUES (?, ?, ?, ?)", rows
        )
        self._db.execute("COMMIT")

    def close(self) -> None:
        if self._db:
            self._db.close()
            self._db = None


class CachedBackend:
    """Any backend behind the call cache (in the spirit of lm-evaluation-harness's CachingLM).

    Answers come from the cache when their key is there; the rest go to the
    backend as one batch (or in slices of `commit_every`, each committed as it
    finishes, so an interrupt loses at most one slice). Failures are returned
    but never cached, so the next run retries them. `calls` and `hits` count
    what was computed and what was found; progress counts hits up front.
    """

    def __init__(self, backend, cache: Cache, commit_every: int | None = None):
        self.backend, self.cache, self.commit_every = backend, cache, commit_every
        self.identity = backend.identity
        self.supports_logprobs = getattr(backend, "supports_logprobs", True)
        self.calls = self.hits = self.failed = 0

    def _through(self, keys: list[str], width: int, compute, progress) -> list:
        from cai.backends import CallFailed

        found = self.cache.get_many(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(keys) - len(missing)
        if progress and len(keys) > len(missing):
            progress((len(keys) - len(missing)) * width)
        step = self.commit_every or max(len(missing), 1)
        for start in range(0, len(missing), step):
            part = missing[start:start + step]
            new = {keys[i]: out for i, out in zip(part, compute(part, progress))}
            self.calls += len(part)
            failed = sum(isinstance(v, CallFailed) for v in new.values())
            self.failed += failed
            self.cache.put_many((k, self.identity, v) for k, v in new.items() if not isinstance(v, CallFailed))
            found.update(new)
        return [found[k] for k in keys]

    def chat(self, conversations, sampling, progress=None) -> list:
        keys = [call_key(self.identity, "chat", c, s.key()) for c, s in zip(conversations, sampling)]
        return self._through(keys, 1, lambda part, prog: self.backend.chat(
            [conversations[i] for i in part], [sampling[i] for i in part], progress=prog), progress)

    def choice_logprobs(self, conversations, choices, progress=None) -> list:
        keys = [call_key(self.identity, "choices", c, {"choices": list(choices)}) for c in conversations]
        return self._through(keys, len(choices), lambda part, prog: self.backend.choice_logprobs(
            [conversations[i] for i in part], choices, progress=prog), progress)

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
