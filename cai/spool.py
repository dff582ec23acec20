"""Node-local spools: each Ray worker's calls on its own node's disk until the driver's cache holds them.

A spool is the worker's call cache (cai/cache.py, SQLite) in a folder of its
own, on the disk of the node it runs on: one writer per file, never a network
file system. A worker commits each call there as it is made; the driver lands
the block's calls in the run's cache.sqlite, after which the worker drops them
from its spool. So a spool holds at most a worker's last blocks, and after a
killed run the next run collects them (a task pinned to each node) and merges
them before any work starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
from pathlib import Path

ROOT_ENV = "CAI_SPOOL_DIR"  # default: ~/.cache/cai/spool on each node


def root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or Path.home() / ".cache" / "cai" / "spool")


def run_key(out: str | Path) -> str:
    """One run folder's spools on every node: the driver's host and the folder's absolute path."""
    where = f"{socket.gethostname()}\x1f{Path(out).resolve()}"
    return hashlib.sha256(where.encode()).hexdigest()[:16]


def worker_dir(key: str, index: int) -> Path:
    # By worker index, not process: an actor Ray restarts after a crash finds its own spool again.
    return root() / key / f"worker-{index:04d}"


def _select(db: Path, columns: str) -> list[tuple]:
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
    try:
        return conn.execute(f"SELECT {columns} FROM calls").fetchall()
    except sqlite3.DatabaseError:  # a spool whose worker died before its first commit
        return []
    finally:
        conn.close()


def read(key: str) -> list[tuple[str, str, object, list | None]]:
    """Every call in this node's spools of the run, as (key, model, value, usage) rows for Cache.put_many."""
    return [(k, m, json.loads(v), json.loads(u) if u else None)
            for db in sorted((root() / key).glob("worker-*/cache.sqlite"))
            for k, m, v, u in _select(db, "key, model, value, usage")]


def stored(out: str | Path) -> set[str]:
    """Keys of every call a run folder's cache and this machine's spools of it hold (tests, bench)."""
    dbs = [Path(out) / "cache.sqlite", *(root() / run_key(out)).glob("worker-*/cache.sqlite")]
    return {k for db in dbs if db.exists() for (k,) in _select(db, "key")}


def clear(key: str) -> None:
    shutil.rmtree(root() / key, ignore_errors=True)


def remove(folder: Path) -> None:
    """One worker's spool; the run's folder too once it is empty."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:  # other workers' spools are still there
        pass
