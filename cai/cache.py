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


class Cache:
    """get_many/put_many over one SQLite file; `enabled=False` makes it a no-op."""

    def __init__(self, path: str | Path, enabled: bool = True, readonly: bool = False):
        self.enabled = enabled
        self.readonly = readonly
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        if enabled and readonly:
            # For --plan: look, never create or write. A missing cache reads as empty.
            if self.path.exists():
                # A cleanly closed cache has no WAL: read the file as immutable, which creates no
                # -wal/-shm files beside it. After a killed run the WAL holds committed calls: read it.
                wal = self.path.with_name(self.path.name + "-wal").exists()
                mode = "mode=ro" if wal else "immutable=1"
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?{mode}", uri=True, timeout=60)
            return
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL keeps WAL commits durable across a killed process (not power loss),
            # which is the crash the resume contract is about.
            self._db.execute("PRAGMA synchronous=NORMAL")
            # Random sha256 keys dirty a random page per insert; checkpointing every
            # 1000 pages (the default) made inserts twice as slow at 100k examples.
            self._db.execute("PRAGMA wal_autocheckpoint=10000")
            self._db.execute(_SCHEMA)

    def get_many(self, keys: Iterable[str]) -> dict[str, object]:
        if not self._db:
            return {}
        keys = list(dict.fromkeys(keys))
        found: dict[str, object] = {}
        for i in range(0, len(keys), _BATCH):
            part = keys[i:i + _BATCH]
            marks = ",".join("?" * len(part))
            for key, value in self._db.execute(
                f"SELECT key, value FROM calls WHERE key IN ({marks})", part
            ):
                found[key] = json.loads(value)
        return found

    def put_many(self, items: Iterable[tuple[str, str, object]]) -> None:
        """Store (key, model, value) rows in one transaction."""
        if not self._db or self.readonly:
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
