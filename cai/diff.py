"""`cai diff RUN`: what a constitution edit changed in the dataset.

It compares two versions kept under RUN/versions/<sha12>/ (cai.versions): by
default the run's current one (run.json) against the most recent other one.
Reported: which principles were added, removed or edited (and which fields),
rows changed / unchanged / added / dropped (by id, comparing `chosen` and
`rejected`), principle usage before and after, flagged counts by reason and
the ids that became flagged or unflagged, and a few before/after revisions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from cai import versions
from cai.errors import InputError, Problem


def _rows(version_dir: Path) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for f in sorted((version_dir / "dataset").glob("*.parquet")):
        for r in pq.read_table(f, columns=["id", "chosen", "rejected", "principle_ids"]).to_pylist():
            rows[r["id"]] = r
    return rows


def _principles(version_dir: Path) -> dict[str, dict]:
    path = version_dir / "constitution.yaml"
    if not path.is_file():
        return {}
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {p["id"]: p for p in doc.get("principles") or [] if isinstance(p, dict) and "id" in p}


def _pick(run_dir: Path, prefix: str | None, flag: str) -> dict:
    if prefix is None:
        return None
    found = versions.find_version(run_dir, prefix)
    if not found:
        kept = ", ".join(v["constitution"]["sha256"][:12] for v in versions.list_versions(run_dir)) or "none"
        raise InputError([Problem(flag, None, "", f"no single kept version matches {prefix!r} (kept: {kept})")])
    return found


def compare(run_dir: str | Path, old: str | None = None, new: str | None = None, samples: int = 3) -> dict:
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise InputError([Problem(str(run_dir), None, "", "not a run directory: no run.json")])
    kept = versions.list_versions(run_dir)
    after = _pick(run_dir, new, "--to")
    if after is None:
        current = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("constitution_sha256", "")
        after = versions.find_version(run_dir, current) if current else None
        after = after or (kept[-1] if kept else None)
    before = _pick(run_dir, old, "--from")
    if before is None:
        others = [v for v in kept if after is None or v["constitution"]["sha256"] != after["constitution"]["sha256"]]
        before = others[-1] if others else None
    if after is None or before is None:
        raise InputError([Problem(str(run_dir / versions.VERSIONS), None, "",
                                  f"{len(kept)} dataset version(s) kept; a diff needs two: edit the constitution "
                                  "and re-run `cai generate --out` on this run directory")])
    old_rows, new_rows = _rows(before["dir"]), _rows(after["dir"])
    changed = [i for i in sorted(old_rows.keys() & new_rows.keys())
               if (old_rows[i]["chosen"], old_rows[i]["rejected"]) != (new_rows[i]["chosen"], new_rows[i]["rejected"])]
    old_p, new_p = _principles(before["dir"]), _principles(after["dir"])
    edited = {pid: sorted(k for k in set(old_p[pid]) | set(new_p[pid]) if old_p[pid].get(k) != new_p[pid].get(k))
              for pid in sorted(old_p.keys() & new_p.keys()) if old_p[pid] != new_p[pid]}
    old_flag, new_flag = before.get("flagged_ids", {}), after.get("flagged_ids", {})
    usage_ids = sorted(set(before["principle_usage"]) | set(after["principle_usage"]) | set(old_p) | set(new_p))
    picks = []
    for i in changed[:samples]:
        picks.append({"id": i, "principle_ids_before": old_rows[i]["principle_ids"],
                      "principle_ids_after": new_rows[i]["principle_ids"],
                      "chosen_before": old_rows[i]["chosen"][-1]["content"],
                      "chosen_after": new_rows[i]["chosen"][-1]["content"]})
    return {
        "before": {**before["constitution"], "dir": str(before["dir"])},
        "after": {**after["constitution"], "dir": str(after["dir"])},
        "principles": {"added": sorted(new_p.keys() - old_p.keys()), "removed": sorted(old_p.keys() - new_p.keys()),
                       "edited": edited},
        "rows": {"before": len(old_rows), "after": len(new_rows), "changed": len(changed),
                 "unchanged": len(old_rows.keys() & new_rows.keys()) - len(changed),
                 "added": len(new_rows.keys() - old_rows.keys()), "dropped": len(old_rows.keys() - new_rows.keys()),
                 "changed_ids": changed},
        "principle_usage": {p: [before["principle_usage"].get(p, 0), after["principle_usage"].get(p, 0)] for p in usage_ids},
        "flagged": {"before": before["counts"].get("flagged") or {}, "after": after["counts"].get("flagged") or {},
                    "newly_flagged": sorted(new_flag.keys() - old_flag.keys()),
                    "no_longer_flagged": sorted(old_flag.keys() - new_flag.keys())},
        "samples": picks,
        # What people decided in `cai review`, as each build applied it (None: no review then).
        "review": {"before": before["counts"].get("review"), "after": after["counts"].get("review")},
    }


def _clip(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _reviewed(r: dict | None) -> str:
    if not r:
        return "none"
    stale = f", {r['stale']} stale" if r["stale"] else ""
    return f"{r['reviewed']} (accepted {r['accepted']}, edited {r['edited']}, rejected {r['rejected']}{stale})"


def render(report: dict) -> str:
    b, a = report["before"], report["after"]
    p, r = report["principles"], report["rows"]
    out = [f"constitution {b['name']} v{b['version']} {b['sha256'][:12]}  ->  {a['name']} v{a['version']} {a['sha256'][:12]}",
           "principles: " + ("; ".join(filter(None, [
               f"added {', '.join(p['added'])}" if p["added"] else "",
               f"removed {', '.join(p['removed'])}" if p["removed"] else "",
               *[f"edited {pid} ({', '.join(fields)})" for pid, fields in p["edited"].items()]])) or "no change"),
           f"rows: {r['changed']} changed, {r['unchanged']} unchanged, {r['added']} added, {r['dropped']} dropped "
           f"({r['before']} -> {r['after']} pairs)", "principle usage (rounds before -> after):"]
    for pid, (x, y) in report["principle_usage"].items():
        mark = "" if x == y else f"  ({y - x:+d})"
        out.append(f"  {pid:<28} {x:>5} -> {y:<5}{mark}")
    f = report["flagged"]
    reasons = sorted(set(f["before"]) | set(f["after"]))
    out.append("flagged: " + (", ".join(f"{k} {f['before'].get(k, 0)} -> {f['after'].get(k, 0)}" for k in reasons) or "none either side")
               + f"; newly flagged {len(f['newly_flagged'])}, no longer flagged {len(f['no_longer_flagged'])}")
    out.append("reviewed rows: " + " -> ".join(_reviewed(report["review"][k]) for k in ("before", "after")))
    for s in report["samples"]:
        out += [f"--- {s['id']} (principles {', '.join(s['principle_ids_before'])} -> {', '.join(s['principle_ids_after'])})",
                f"  before: {_clip(s['chosen_before'])}", f"  after:  {_clip(s['chosen_after'])}"]
    return "\n".join(out)
