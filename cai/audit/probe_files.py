"""`cai audit --probes FILE`: a user's own pairs with a known better answer, checked line by line.

One JSON object a line: `prompt`, `better`, `worse` (non-empty strings),
optional `id` (string or integer; derived from the texts when missing, so it
stays stable when lines move) and `kind`. Every problem in every file is
reported at once as FILE:LINE: field: message (exit 2), before any judge call.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from cai.audit.probes import USER, Probe
from cai.errors import InputError, Problem
from cai.prompts import _jsonl  # the prompt files' reader: the same UTF-8, BOM and JSON messages

REQUIRED = ("prompt", "better", "worse")


def _check(obj: dict, where: tuple[str, int]) -> list[Problem]:
    problems = []
    for name in REQUIRED:
        value = obj.get(name)
        if not isinstance(value, str) or not value.strip():
            problems.append(Problem(*where, name, "field required" if value is None else "must be a non-empty string"))
    if not problems and obj["better"].strip() == obj["worse"].strip():
        problems.append(Problem(*where, "worse", "the same text as better: the pair has no known better answer"))
    if obj.get("id") is not None and not isinstance(obj["id"], (str, int)):
        problems.append(Problem(*where, "id", "must be a string or an integer"))
    if obj.get("kind") is not None and not isinstance(obj["kind"], str):
        problems.append(Problem(*where, "kind", "must be a string"))
    return problems


def _clusters(probes: list[Probe]) -> list[Probe]:
    """Probes that share an answer text (directly or through others) form one cluster: their verdicts
    are not independent, so intervals resample them together."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}  # union-find over ("probe", id) and ("text", answer)

    def root(x: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for p in probes:
        for text in (p.better, p.worse):
            parent[root(("text", text.strip()))] = root(("probe", p.id))  # roots stay probe nodes
    return [replace(p, cluster=root(("probe", p.id))[1]) for p in probes]


def load_probe_files(paths: list[Path | str]) -> list[Probe]:
    """Every file's probes in order (ids unique across files), or InputError naming every bad line."""
    problems: list[Problem] = []
    probes: list[Probe] = []
    seen: dict[str, str] = {}  # id -> FILE:LINE of its first use
    for path in map(str, paths):
        before, found = len(problems), 0
        if not Path(path).is_file():
            problems.append(Problem(path, None, "", "file not found" if not Path(path).exists() else "not a file"))
            continue
        try:
            for n, obj in _jsonl(Path(path)):
                found += 1
                bad = _check(obj, (path, n))
                if bad:
                    problems += bad
                    continue
                given = obj.get("id") not in (None, "")
                pid = str(obj["id"]) if given else "u-" + hashlib.sha256(
                    "\x1f".join(obj[k] for k in REQUIRED).encode()).hexdigest()[:12]
                if pid in seen:
                    what = f"duplicate id {pid!r}" if given else "the same prompt, better and worse as"
                    problems.append(Problem(path, n, "id" if given else "prompt", f"{what} (first at {seen[pid]})"))
                    continue
                seen[pid] = f"{path}:{n}"
                probes.append(Probe(pid, obj["prompt"], obj["better"], obj["worse"], obj.get("kind") or USER, USER))
        except InputError as exc:  # unreadable from this line on: keep checking the other files
            problems += exc.problems
        except OSError as exc:
            problems.append(Problem(path, None, "", f"cannot read file: {exc.strerror or exc}"))
        if not found and len(problems) == before:
            problems.append(Problem(path, None, "", "no probe pairs in this file"))
    if problems:
        raise InputError(problems)
    return _clusters(probes)
