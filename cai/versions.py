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
from collections import Counter
from pathlib import Path
from typing import Iterable

from cai.runfiles import write_text_atomic

VERSIONS = "versions"
SHORT = 12


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
            "counts": {k: counts.get(k) for k in ("records", "pairs", "flagged_records", "flagged", "splits")},
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


def list_versions(run_dir: str | Path) -> list[dict]:
    """Every kept version, oldest first: version.json plus `dir`."""
    root = Path(run_dir) / VERSIONS
    found = []
    if root.is_dir():
        for d in root.iterdir():
            meta_path = d / "version.json"
            if d.is_dir() and not d.name.startswith(".") and meta_path.is_file():
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                meta["dir"] = d
                found.append(meta)
    return sorted(found, key=lambda m: m["created"])


def find_version(run_dir: str | Path, sha_prefix: str) -> dict | None:
    matches = [v for v in list_versions(run_dir) if v["constitution"]["sha256"].startswith(sha_prefix.lower())]
    return matches[0] if len(matches) == 1 else None
