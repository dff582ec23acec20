"""`cai review RUN --apply`: rebuild the run's dataset from its records and review.jsonl, with no model.

The same build `cai generate` ends with (dataset.build, then the kept version),
fed the run's current records (run.json's fingerprint). It holds the run's
lock, like every writer of the dataset; the review server never does.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from cai import dataset, versions
from cai.config import FeedbackConfig, PipelineConfig
from cai.constitution import load_constitution
from cai.errors import InputError, Problem
from cai.prompts import load_prompts
from cai.records import RecordStore
from cai.review.decisions import Review, review_warnings
from cai.rundir import lock
from cai.runfiles import write_json


class NotARun(InputError):
    pass


def read_run(run_dir: str | Path) -> dict:
    """RUN/run.json, or one-line InputError saying why RUN is not a run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotARun([Problem(str(run_dir), None, "", "not a run directory: no such folder")])
    path = run_dir / "run.json"
    if not path.is_file():
        raise NotARun([Problem(str(run_dir), None, "", "not a run directory: no run.json (made by `cai generate`)")])
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(run, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotARun([Problem(str(path), None, "", f"unreadable ({exc})")]) from None
    return run


def _wanted_ids(run: dict) -> set[str] | None:
    """The run's prompt ids (generate builds from those); None when the prompts can no longer be read."""
    try:
        config = PipelineConfig.model_validate(run["config"])
        return {e["id"] for e in load_prompts(config.prompts, config.limit, config.holdout)}
    except Exception:  # noqa: BLE001 - moved prompt files or an old run.json: every current record
        return None


def _constitution(run_dir: Path, run: dict):
    """The constitution the records were made with: its file if unchanged, else the kept version's copy."""
    sha = run.get("constitution_sha256")
    paths = [run.get("constitution_path")]
    kept = versions.find_version(run_dir, sha) if sha else None
    if kept:
        paths.append(kept["dir"] / "constitution.yaml")
    for path in filter(None, paths):
        try:
            c = load_constitution(path)
        except (InputError, OSError):
            continue
        if c.sha256 == sha:
            return c
    return None


def rebuild(run_dir: str | Path) -> dict:
    """Rebuild RUN/dataset and RUN/sft honouring review.jsonl; update run.json; return the new counts."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    fingerprint = run.get("fingerprint")
    if not fingerprint or "counts" not in run:
        raise InputError([Problem(str(run_dir / "run.json"), None, "", "the run has not built a dataset yet "
                                  "(no fingerprint or counts): run `cai generate` first")])
    fb = FeedbackConfig.model_validate((run.get("config") or {}).get("feedback") or {})
    test_size = (run.get("config") or {}).get("test_size", 0.1)
    wanted = _wanted_ids(run)
    with lock(run_dir):
        store = RecordStore(run_dir / "records", readonly=True)  # damage is reported; generate repairs it

        def records():
            return (r for r in store.current(fingerprint) if wanted is None or r["id"] in wanted)

        built = dataset.build(records(), run_dir, test_size, fb if fb.enabled else None, Review.of(run_dir))
        constitution = _constitution(run_dir, run)
        if constitution is not None:
            versions.snapshot(run_dir, constitution, records(), built)
        else:
            warnings.warn(versions.DamagedVersion(
                "the run's constitution file has changed since it ran: the dataset is rebuilt, "
                "its kept version (versions/) is not updated"), stacklevel=2)
        notes = [w for w in run.get("warnings") or [] if "review decisions are stale" not in w
                 and "review.jsonl" not in w]
        notes += review_warnings(built.get("review"))
        notes += [f"records/{q['shard']} line {q['line']} is damaged ({q['error']}): its records are left out "
                  "until `cai generate` moves it aside and recomputes them" for q in store.quarantined]
        run["counts"] = {**run["counts"], **built}
        if "review" not in built:
            run["counts"].pop("review", None)
        run["warnings"] = notes
        write_json(run_dir / "run.json", run)
    return run


def summary_line(run: dict) -> str:
    r = run["counts"].get("review") or {}
    return (f"dataset rebuilt: {run['counts']['pairs']} pairs; reviewed {r.get('reviewed', 0)} rows (accepted "
            f"{r.get('accepted', 0)}, edited {r.get('edited', 0)}, rejected {r.get('rejected', 0)}), "
            f"{r.get('stale', 0)} stale decisions not applied")
