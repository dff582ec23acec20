"""YAML loading that remembers where things came from.

Users edit constitutions and configs by hand, so every error must point at a
line. PyYAML forgets source positions once it builds Python objects, so we keep
the composed node tree around long enough to record the line of every mapping
key and list item, and to catch duplicate keys (which PyYAML silently merges).
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Union

import yaml
from pydantic import BaseModel, ValidationError

from cai.errors import InputError, Problem

Loc = tuple[Any, ...]
Locate = Callable[[Loc], "int | None"]

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


def did_you_mean(word: str, options: Iterable[str]) -> str:
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


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
            raise InputError([Problem(file, ln, _dotted(loc), msg) for ln, loc, msg in dups])
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
        raise InputError([Problem(file, locate(()), "", f"top level must be a mapping, got {_kind(data)}")])
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise InputError(pydantic_problems(e, file, locate, model_cls)) from None


# --- pydantic errors -> Problems -------------------------------------------

_EXPECTED = {
    "string": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
    "list": "a list", "dict": "a mapping", "model": "a mapping", "model_attributes": "a mapping",
    "tuple": "a list", "set": "a list", "decimal": "a number", "date": "a date", "datetime": "a date-time",
}
_BOUNDS = {"greater_than": ("gt", "greater than"), "greater_than_equal": ("ge", "at least"),
           "less_than": ("lt", "less than"), "less_than_equal": ("le", "at most")}
# Union-member tags pydantic inserts into locs; they are not data keys.
_TAGS = {"str", "int", "float", "bool", "bytes", "list", "dict", "set", "tuple", "none",
         "lax-or-strict", "json-or-python", "strict", "lax"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "list", dict: "mapping"}.get(type(value), type(value).__name__)


def _describe(value: Any) -> str:
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"{_kind(value)} {value}"
    return _kind(value)


def _num(x: Any) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc)


def _model_in(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        found = _model_in(arg)
        if found:
            return found
    return None


def _step(tp: Any, part: Any) -> Any:
    """The type found one level below `tp` under key/index `part` (None if unknown)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _step(typing.get_args(tp)[0], part)
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return _step(members[0], part) if len(members) == 1 else None
    model = tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None
    if model is not None:
        field = model.model_fields.get(part)
        return field.annotation if field else None
    args = typing.get_args(tp)
    if origin in (list, tuple, set, frozenset) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _is_tag(tp: Any, part: str) -> bool:
    if typing.get_origin(tp) in (Union, types.UnionType):
        if part in {getattr(a, "__name__", None) for a in typing.get_args(tp)}:
            return True
    return (part in _TAGS or "[" in part) and _model_in(tp) is None


def _clean_loc(loc: Loc, model_cls: type[BaseModel] | None) -> tuple[Loc, type[BaseModel] | None, bool]:
    """Drop pydantic's union tags from loc; also return the model owning the last key
    and whether a tag was dropped (the error is then one of several union attempts)."""
    tp: Any = model_cls
    clean: list[Any] = []
    owner: type[BaseModel] | None = model_cls
    tagged = False
    for part in loc:
        if isinstance(part, str) and _is_tag(tp, part):
            tagged = True
            continue
        owner = _model_in(tp) if tp is not None else None
        clean.append(part)
        tp = _step(tp, part) if tp is not None else None
    return tuple(clean), owner, tagged


def _message(err: dict[str, Any], owner: type[BaseModel] | None, key: Any) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        options = [f.alias or name for name, f in owner.model_fields.items()] if owner else []
        return f"unknown key '{key}'" + did_you_mean(str(key), options)
    if kind in _BOUNDS:
        name, words = _BOUNDS[kind]
        return f"must be {words} {_num(ctx.get(name))}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} items"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected')}, got {_describe(value)}"
    base = kind.rsplit("_", 1)[0] if kind.endswith(("_type", "_parsing")) else kind
    if base in _EXPECTED:
        return f"expected {_EXPECTED[base]}, got {_describe(value)}"
    msg: str = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    msg = msg.replace("Input should be", "should be")
    return msg[:1].lower() + msg[1:] if msg[1:2].islower() else msg  # keep acronyms


def pydantic_problems(
    exc: ValidationError, file: str, locate: Locate, model_cls: type[BaseModel] | None = None
) -> list[Problem]:
    """One Problem per pydantic error, with source line and dotted field path, sorted by line.

    A value that fails every member of a union yields one error per member;
    those are folded into one problem ("expected a string or an integer, got list").
    """
    entries: dict[tuple, list[str]] = {}  # insertion-ordered; union attempts share a key
    for n, err in enumerate(exc.errors(include_url=False)):
        loc, owner, tagged = _clean_loc(tuple(err["loc"]), model_cls)
        message = _message(err, owner, loc[-1] if loc else "")
        key = ("union", loc) if tagged else (n, loc)
        if message not in entries.setdefault(key, []):
            entries[key].append(message)
    problems = [Problem(str(file), locate(loc), _dotted(loc), _fold(msgs)) for (_, loc), msgs in entries.items()]
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))


def _fold(messages: list[str]) -> str:
    parts = [m.removeprefix("expected ").split(", got ", 1) for m in messages]
    if len(parts) > 1 and all(m.startswith("expected ") and len(x) == 2 for m, x in zip(messages, parts)):
        if len({got for _, got in parts}) == 1:
            return f"expected {' or '.join(want for want, _ in parts)}, got {parts[0][1]}"
    return "; or ".join(messages)
