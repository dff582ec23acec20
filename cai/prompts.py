"""Prompt sets: JSONL, JSON, CSV, parquet, saved datasets or `hf:NAME`, into one checked list.

Every problem is reported with its file and line (row for columnar files), all
at once, before anything runs. Ids are optional in user files: a missing one
is derived from the prompt text, so it stays stable when rows move.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Iterator

from cai.config import PromptSource
from cai.errors import InputError, Problem

Row = tuple[int | None, dict]  # (line or row number, fields)


def _jsonl(path: Path) -> Iterator[Row]:
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if n == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)  # Windows editors and Excel write one
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError([Problem(str(path), n, "", f"not UTF-8 ({exc.reason})")]) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError([Problem(str(path), n, "", f"invalid JSON: {exc.msg} (column {exc.colno})")]) from None
            if not isinstance(obj, dict):
                raise InputError([Problem(str(path), n, "", f"expected a JSON object, got {type(obj).__name__}")])
            yield n, obj


def _json(path: Path) -> Iterator[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise InputError([Problem(str(path), line, "", f"invalid JSON: {exc}")]) from None
    if not isinstance(data, list):
        raise InputError([Problem(str(path), 1, "", "expected a JSON list of objects")])
    for i, obj in enumerate(data):
        yield (i + 1, obj if isinstance(obj, dict) else {"prompt": obj})


def _csv(path: Path, field: str = "prompt") -> Iterator[Row]:
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)  # Excel's "CSV UTF-8" starts with one
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError([Problem(str(path), line, "", f"not UTF-8 ({exc.reason})")]) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is not None and field not in reader.fieldnames:
        raise InputError([_no_header(path, field, reader.fieldnames)])
    for obj in reader:
        yield reader.line_num, obj


COLUMN_NAME = re.compile(r"[A-Za-z_][\w .-]{0,39}")


def _no_header(path: Path, field: str, first: list[str]) -> Problem:
    """The first row names no prompt column: a missing header (data in row 1), or a header naming another one."""
    names = [c.strip() for c in first if c.strip()]
    if names and all(COLUMN_NAME.fullmatch(c) and len(c.split()) <= 3 for c in names):
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        return Problem(str(path), 1, "", f"no {field!r} column: the header row names {shown} (name the prompt "
                                         f"column {field!r}, or set field: in the pipeline's prompt source)")
    return Problem(str(path), 1, "", f"no header row: the first line must name the columns (e.g. {field},id,category)")


def _parquet(path: Path) -> Iterator[Row]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pyarrow.ArrowException, OSError) as exc:
        msg = f"cannot read parquet: {str(exc).strip().splitlines()[0]}"
        raise InputError([Problem(str(path), None, "", msg)]) from None
    n = 0
    for batch in table.to_batches():
        for obj in batch.to_pylist():
            n += 1
            yield n, obj


def _table(source: PromptSource) -> Iterator[Row]:
    import datasets

    path = source.path
    if path.startswith("hf:"):
        table = datasets.load_dataset(path[3:], split=source.split)
    elif Path(path).is_dir():
        try:
            table = datasets.load_from_disk(path)
        except FileNotFoundError:
            table = datasets.load_dataset(path, split=source.split)
        if isinstance(table, datasets.DatasetDict):
            table = table[source.split]
    for i, obj in enumerate(table):
        yield i + 1, obj


def _rows(source: PromptSource) -> Iterator[Row]:
    path = Path(source.path)
    if not source.path.startswith("hf:") and not path.exists():
        raise InputError([Problem(source.path, None, "", "file not found")])
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl(path)
    if suffix == ".json":
        return _json(path)
    if suffix == ".csv":
        return _csv(path, source.field)
    if suffix == ".parquet" and not path.is_dir():
        return _parquet(path)
    if path.is_dir() or source.path.startswith("hf:"):
        return _table(source)
    raise InputError([Problem(source.path, None, "", "unknown prompt format (use .jsonl, .json, .csv, .parquet, a dataset folder or hf:NAME)")])


def is_held_out(example_id: str, holdout: float) -> bool:
    """Kept out of generation for `cai eval` (the pipeline's `holdout`). Its own hash, so the
    dataset's test split (cai.dataset.split_of) still draws from the prompts that are generated."""
    bucket = int.from_bytes(hashlib.sha256(f"holdout\x1f{example_id}".encode()).digest()[:4], "big") / 2**32
    return bucket < holdout


def load_prompts(sources: list[PromptSource], limit: int | None = None, holdout: float = 0.0,
                 held_out: bool = False) -> list[dict]:
    """Examples {id, prompt, category, source, where}; with `limit`, taken round-robin across sources
    so a small run still sees every set. `holdout` splits off the prompts kept for `cai eval`
    (is_held_out): generation gets the rest, eval (held_out=True) those."""

    problems: list[Problem] = []
    seen: dict[str, tuple[str, int, str]] = {}  # id -> (path, line or row, file name) of its first use
    per_source: list[list[dict]] = []
    for source in sources:
        name = Path(source.path).name if not source.path.startswith("hf:") else source.path
        examples, found = [], 0
        where_unit = "row " if Path(source.path).suffix.lower() in (".parquet", ".json") else ""
        before = len(problems)
        try:
            for n, obj in _rows(source):
                where = (source.path, n if not where_unit else None)
                field = f"row {n}: " if where_unit else ""
                text = obj.get(source.field)
                if not isinstance(text, str) or not text.strip():
                    msg = "field required" if text is None else "must be a non-empty string"
                    problems.append(Problem(*where, f"{field}{source.field}", msg))
                    continue
                raw_id = obj.get("id")
                if raw_id is not None and not isinstance(raw_id, (str, int)):
                    problems.append(Problem(*where, f"{field}id", "must be a string or an integer"))
                    continue
                given = raw_id not in (None, "")
                ex_id = str(raw_id) if given else "p-" + hashlib.sha256(text.encode()).hexdigest()[:12]
                if ex_id in seen:
                    first_path, first_n, first_name = seen[ex_id]
                    if given:
                        problems.append(Problem(*where, f"{field}id", f"duplicate id {ex_id!r} (first at {first_name}:{first_n})"))
                    else:  # the id is derived from the text: name the user's own lines, not a made-up id
                        unit = "row" if where_unit else "line"
                        first = (f"{unit} {first_n}" if first_path == source.path
                                 else f"{first_path} {unit} {first_n}" if where_unit else f"{first_path}:{first_n}")
                        again = " (the file is listed twice)" if (first_path, first_n) == (source.path, n) else ""
                        problems.append(Problem(*where, f"{field}{source.field}", f"duplicate of {first}{again}"))
                    continue
                seen[ex_id] = (source.path, n, name)
                found += 1
                if is_held_out(ex_id, holdout) != held_out:
                    continue
                category = obj.get("category") or source.category
                examples.append({"id": ex_id, "prompt": text, "category": str(category) if category else None, "source": name,
                                 **({"kept": True} if source.mode == "keep" else {}),
                                 # where the prompt is, for later checks' messages (file, line, field)
                                 "where": (*where, f"{field}{source.field}")})
        except InputError as exc:  # the file cannot be read further: keep what was found, check the other files
            problems += exc.problems
        except OSError as exc:  # e.g. a directory named like a prompt file, no permission
            problems.append(Problem(source.path, None, "", f"cannot read file: {exc.strerror or exc}"))
        if not found and len(problems) == before:
            problems.append(Problem(source.path, None, "", "no prompts in this source"))
        per_source.append(examples)
    if problems:
        raise InputError(problems)
    out: list[dict] = []
    for i in range(max(len(e) for e in per_source)):
        out.extend(e[i] for e in per_source if i < len(e))
    return out[:limit] if limit else out
