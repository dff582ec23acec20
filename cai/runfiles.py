"""Files in a run folder: atomic writes, JSON reports with secrets scrubbed, package versions.

Every job that writes into a run folder (generate, audit, eval, train) goes
through here, so a reader never sees half a file and no key pasted into a
config lands in a report.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

from cai import __version__
from cai.redact import scrub_run

_PACKAGES = ("torch", "transformers", "datasets", "trl", "pydantic", "pyarrow")


def package_versions() -> dict:
    """Versions of python, cai and the libraries whose behaviour shapes the outputs."""
    found = {"python": platform.python_version(), "cai": __version__}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def write_text_atomic(path: Path, text: str) -> None:
    """Write beside the target and rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        shareable(tmp)
        os.replace(tmp, path)
    except BaseException:
        # A full disk fails the write or the close: leave no stray temporary file behind.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: dict) -> None:
    # Defensive: a key pasted into a config (extra_body, ...) never lands in a report.
    write_text_atomic(path, json.dumps(scrub_run(data), indent=2, ensure_ascii=False) + "\n")


def shareable(path: str) -> None:
    """mkstemp makes 0600 files; give outputs the mode a plain open() would (0666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def why_no_pairs(run_dir: Path) -> str | None:
    """Why a run folder has no dataset rows, read from its run.json (None: it has some, or is no run)."""
    try:
        counts = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8")).get("counts") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if counts.get("pairs") != 0:
        return None
    n, where = counts.get("records") or 0, Path(run_dir) / "run.json"
    if not n:
        failed = counts.get("failed") or 0
        return f"0 pairs: the run has no records ({failed} prompts failed; see errors in {where})"
    if counts.get("flagged_records") == n:
        reasons = ", ".join(f"{k} {v}" for k, v in (counts.get("flagged") or {}).items())
        return f"0 pairs: all {n} records flagged ({reasons}); see {where}"
    return f"0 pairs: none of the {n} records passed the quality gates and the judge; see {where}"
