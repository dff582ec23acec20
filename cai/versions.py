"""Dataset versions kept by constitution hash, so an edit can be diffed and undone.

`RUN/dataset` and `RUN/sft` always hold the current build. After each build the
same files are kept under `RUN/versions/<sha12>/` (hard links: parquet files are
never rewritten in place, a build writes new ones), beside the constitution
text they were made with and `version.json`: the constitution's name, version
and full sha256, when it was built, the counts, how often each principle was
drawn, and which ids were flagged and why (flagged rows are not in the
dataset, the diff still needs them). Re-running the same constitution replaces
its version; other versions are kept until the user deletes them. `cai diff`
reads these folders.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable

from cai.runfiles import write_text_atomic

VERSIONS = "versions"
SHORT = 12
QUARANTINE = "quarantine"


class DamagedVersion(UserWarning):
    """A kept version whose version.json cannot be read: left out, named in one line."""


def _link_tree(src: Path, dst: Path) -> None:
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


def snapshot(run_dir: str | Path, constitution, records: Iterable[dict], counts: dict) -> Path:
    """Keep RUN/dataset and RUN/sft of this build as versions/<sha12>; return that folder."""
    run_dir = Path(run_dir)
    sha = constitution.sha256
    usage: Counter = Counter()
    flagged: dict[str, list[str]] = {}
    for rec in records:
        usage.update(r["principle_id"] for r in rec["rounds"])
        if rec["flags"]:
            flagged[rec["id"]] = list(rec["flags"])
    root = run_dir / VERSIONS
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".new-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=root))
    try:
        for folder in ("dataset", "sft"):
            if (run_dir / folder).is_dir():
                _link_tree(run_dir / folder, tmp / folder)
        source = constitution.source_path
        if source and Path(source).is_file():
            shutil.copy2(source, tmp / "constitution.yaml")
        meta = {
            "constitution": {"name": constitution.name, "version": constitution.version, "sha256": sha,
                             "path": str(source) if source else None},
            "created": time.time(),
            "counts": {k: counts.get(k) for k in ("records", "pairs", "flagged_records", "flagged", "splits", "review")
                   if k in counts},
            "principle_usage": dict(sorted(usage.items())),
            "principles": [p.id for p in constitution.principles],
            "flagged_ids": dict(sorted(flagged.items())),
        }
        write_text_atomic(tmp / "version.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        target = root / sha[:SHORT]
        old = None
        if target.exists():
            old = root / f".new-old-{sha[:SHORT]}-{os.getpid()}"
            os.rename(target, old)
        os.rename(tmp, target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _read(meta_path: Path) -> dict:
    """version.json, or ValueError saying what is wrong with it (line included)."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{meta_path}: not UTF-8 text ({exc.reason})") from None
    ok = isinstance(meta, dict) and isinstance(meta.get("constitution"), dict) \
        and isinstance(meta["constitution"].get("sha256"), str) and isinstance(meta.get("created"), (int, float))
    if not ok:
        raise ValueError(f"{meta_path}: not a version.json (no constitution.sha256 or created)")
    return meta


def list_versions(run_dir: str | Path) -> list[dict]:
    """Every readable kept version, oldest first: version.json plus `dir`. A damaged one is left
    out with a DamagedVersion warning (readers take no lock, so they move nothing; see quarantine)."""
    root = Path(run_dir) / VERSIONS
    found = []
    if root.is_dir():
        for d in root.iterdir():
            meta_path = d / "version.json"
            if d.is_dir() and not d.name.startswith(".") and meta_path.is_file():
                try:
                    meta = _read(meta_path)
                except ValueError as exc:
                    warnings.warn(DamagedVersion(f"{exc}; version {d.name} skipped"), stacklevel=2)
                    continue
                meta["dir"] = d
                found.append(meta)
    return sorted(found, key=lambda m: m["created"])


def quarantine(run_dir: str | Path) -> list[dict]:
    """Move versions whose version.json is damaged to versions/quarantine/ (the writer holds the run's
    lock); return {version, error, moved_to} for run.json."""
    root = Path(run_dir) / VERSIONS
    moved = []
    for meta_path in sorted(root.glob("*/version.json")) if root.is_dir() else []:
        d = meta_path.parent
        if d.name.startswith(".") or d.name == QUARANTINE:
            continue
        try:
            _read(meta_path)
        except ValueError as exc:
            target = root / QUARANTINE / f"{d.name}-{int(time.time())}"
            target.parent.mkdir(exist_ok=True)
            os.rename(d, target)
            moved.append({"version": d.name, "error": str(exc), "moved_to": str(target.relative_to(run_dir))})
    return moved


def find_version(run_dir: str | Path, sha_prefix: str) -> dict | None:
    matches = [v for v in list_versions(run_dir) if v["constitution"]["sha256"].startswith(sha_prefix.lower())]
    return matches[0] if len(matches) == 1 else None
