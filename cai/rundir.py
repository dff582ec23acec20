"""Claiming an output folder: can we write there, and is anyone else writing there?

Every command that writes a folder checks it with `check_out` before it loads
anything, so a bad `--out` is one line and exit 2, not a traceback after the
model has loaded. Commands that write a run's records, dataset, versions or
cache hold `lock(RUN)` while they run: an exclusive `flock` on `RUN/.lock`,
which the kernel releases when the process dies however it dies, so `kill -9`
never leaves a stale lock. Readers (`push`, `diff`, `train --data`) take no lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cai.errors import InputError, Problem

LOCK = ".lock"


def _bad(flag: str, path: Path, why: str) -> InputError:
    return InputError([Problem("command line", None, flag, f"{path}: {why}")])


def check_out(path: str | Path, flag: str = "--out") -> Path:
    """Raise InputError naming the flag unless `path` is, or can be made, a writable folder.

    Creates nothing: a bad input elsewhere must leave nothing behind. The write is tried
    for real in the nearest existing folder (os.access lies for root and on some mounts).
    """
    path = Path(path).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        what = "is a file" if existing == path else f"{existing} is not a folder"
        raise _bad(flag, path, f"{what}; name a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".cai-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _bad(flag, path, _why(exc)) from None
    return path


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:  # an existing folder where files cannot be made (/proc, ...)
        return "cannot create files there"
    why = exc.strerror or type(exc).__name__
    return f"not writable ({why})" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else why


class InUse(InputError):
    """Another process holds the folder's lock."""


def _holder(fh) -> str:
    fh.seek(0)
    pid = fh.read().strip()
    return f"pid {pid}" if pid.isdigit() else "another process"


@contextmanager
def lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (created if missing); a second holder gets InUse (exit 2)."""
    folder = Path(folder)
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fh = open(folder / LOCK, "a+", encoding="utf-8")
    except OSError as exc:
        raise _bad("--out", folder, _why(exc)) from None
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InUse([Problem(str(folder), None, "", f"in use by {_holder(fh)} "
                                 "(another cai command is writing it; wait for it or use another --out)")]) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield folder
        except BaseException:
            # A command that failed before writing anything (a bad --model, ...) leaves no folder behind.
            if made and [p.name for p in folder.iterdir()] == [LOCK]:
                (folder / LOCK).unlink()
                folder.rmdir()
            raise
    finally:
        fh.close()  # closing the descriptor releases the lock


@contextmanager
def claim(folder: str | Path, flag: str = "--out") -> Iterator[Path]:
    """`check_out` then `lock`: what every writing command does before it writes anything."""
    with lock(check_out(folder, flag)) as path:
        yield path
