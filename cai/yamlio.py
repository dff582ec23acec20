"""YAML loading that remembers where things came from.

Users edit constitutions and configs by hand, so every error must point at a
line. PyYAML forgets source positions once it builds Python objects, so we keep
the composed node tree around long enough to record the line of every mapping
key and list item, and to catch duplicate keys (which PyYAML silently merges).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from cai.errors import InputError, Problem
from cai.field_errors import Loc, dotted, kind_of, pydantic_problems

_MERGE_TAG = "tag:yaml.org,2002:merge"


class Locator:
    """Maps a data path like ("principles", 3, "id") to a 1-based source line."""

    def __init__(self, lines: dict[Loc, int]) -> None:
        self._lines = lines

    def __call__(self, path: Iterable[Any]) -> int | None:
        path = tuple(path)
        # Missing fields and over-deep pydantic locs land on the nearest ancestor.
        for n in range(len(path), -1, -1):
            line = self._lines.get(path[:n])
            if line is not None:
                return line
        return None


class _Loader(yaml.SafeLoader):
    """SafeLoader that also indexes key/item lines and finds duplicate keys."""

    def cai_index(self, node: yaml.Node) -> tuple[dict[Loc, int], list[tuple[int, Loc, str]]]:
        lines: dict[Loc, int] = {(): node.start_mark.line + 1}
        dups: list[tuple[int, Loc, str]] = []
        self._cai_walk(node, (), lines, dups, set())
        return lines, dups

    def _cai_walk(self, node, path, lines, dups, active: set[int]) -> None:
        if id(node) in active:  # recursive alias: nothing new below here
            return
        active = active | {id(node)}
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (i,)] = item.start_mark.line + 1
                self._cai_walk(item, path + (i,), lines, dups, active)
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    self._cai_merge(value_node, path, lines, active)
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    continue  # complex keys: construction reports them
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in first:
                    dups.append((line, path + (key,), f"duplicate key '{key}' (first at line {first[key]})"))
                else:
                    first[key] = line
                lines[path + (key,)] = line
                self._cai_walk(value_node, path + (key,), lines, dups, active)

    def _cai_merge(self, value_node, path, lines, active) -> None:
        # `<<: *base` keys count as present, but explicit keys win.
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for src in sources:
            merged: dict[Loc, int] = {}
            self._cai_walk(src, path, merged, [], active)
            for k, v in merged.items():
                if k != path:
                    lines.setdefault(k, v)


def _noun(what: str) -> str:
    return "file" if what == "file" else f"{what} file"


def _yaml_problem(file: str, text: str, exc: yaml.YAMLError) -> Problem:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        return Problem(file, line, "", f"invalid YAML: unacceptable character #x{exc.character:04x}")
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark else None
    problem = getattr(exc, "problem", None) or str(exc)
    if "'\\t'" in problem:
        lead = text.splitlines()[line - 1] if line and line <= len(text.splitlines()) else ""
        indent = lead[: len(lead) - len(lead.lstrip(" \t"))]
        where = "for indentation" if "\t" in indent else "here"
        return Problem(file, line, "", f"tab character used {where}; YAML needs spaces")
    msg = f"invalid YAML: {problem}"
    ctx, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if ctx and problem.startswith("but "):  # composer errors put the gist in the context
        msg = f"invalid YAML: {ctx}, {problem}"
    elif ctx and cmark and cmark.line + 1 != line:
        msg += f" ({ctx} at line {cmark.line + 1})"
    return Problem(file, line, "", msg)


def load_yaml(path: str | Path, *, what: str = "file") -> tuple[Any, Locator]:
    file, p, noun = str(path), Path(path), _noun(what)
    if p.is_dir():
        raise InputError([Problem(file, None, "", f"is a directory, not a {noun}")])
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError([Problem(file, None, "", f"{noun} not found")]) from None
    except OSError as e:
        raise InputError([Problem(file, None, "", f"cannot read {noun}: {e.strerror}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        msg = f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {col})"
        raise InputError([Problem(file, line, "", msg)]) from None

    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise InputError([Problem(file, None, "", f"{noun} is empty")])
        lines, dups = loader.cai_index(node)
        if dups:
            raise InputError([Problem(file, ln, dotted(loc), msg) for ln, loc, msg in dups])
        data = loader.construct_document(node)
    except yaml.YAMLError as e:
        raise InputError([_yaml_problem(file, text, e)]) from None
    finally:
        loader.dispose()
    if data is None:
        raise InputError([Problem(file, None, "", f"{noun} is empty")])
    return data, Locator(lines)


def load_model(path: str | Path, model_cls: type[BaseModel], *, what: str = "file") -> BaseModel:
    data, locate = load_yaml(path, what=what)
    file = str(path)
    if not isinstance(data, dict):
        raise InputError([Problem(file, locate(()), "", f"top level must be a mapping, got {kind_of(data)}")])
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise InputError(pydantic_problems(e, file, locate, model_cls)) from None
