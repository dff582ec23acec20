"""pydantic validation errors as one readable Problem each: source line, dotted field, plain words.

pydantic's own messages name internal union tags and types ("Input should be a valid
string [type=string_type…]"); users of a hand-written YAML file need "expected a string,
got list" at the right line, with a did-you-mean for misspelt keys.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Callable, Iterable, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from cai.errors import Problem

Loc = tuple[Any, ...]


class StrictModel(BaseModel):
    """The base of every model a person writes in YAML: an unknown key is an error, never ignored."""

    model_config = ConfigDict(extra="forbid")


Locate = Callable[[Loc], "int | None"]


def did_you_mean(word: str, options: Iterable[str]) -> str:
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


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


def kind_of(value: Any) -> str:
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
        return f"{kind_of(value)} {value}"
    return kind_of(value)


def _num(x: Any) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def dotted(loc: Loc) -> str:
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


def _tagged_member(tp: Any, part: Any) -> Any:
    """The member of a discriminated union that pydantic names by `part` in a loc (else None)."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) not in (Union, types.UnionType):
        return None
    members = [m for m in typing.get_args(tp) if m is not type(None)]
    if len(members) == 1:  # Optional[...]: look inside
        return _tagged_member(members[0], part)
    for member in members:
        if typing.get_origin(member) is typing.Annotated:
            inner, *meta = typing.get_args(member)
            if any(getattr(m, "tag", None) == part for m in meta):
                return inner
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
        member = _tagged_member(tp, part) if isinstance(part, str) else None
        if member is not None:  # a discriminated union's tag: read on inside the member it names
            tp = member
            continue
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
    problems = [Problem(str(file), locate(loc), dotted(loc), _fold(msgs)) for (_, loc), msgs in entries.items()]
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))


def _fold(messages: list[str]) -> str:
    parts = [m.removeprefix("expected ").split(", got ", 1) for m in messages]
    if len(parts) > 1 and all(m.startswith("expected ") and len(x) == 2 for m, x in zip(messages, parts)):
        if len({got for _, got in parts}) == 1:
            return f"expected {' or '.join(want for want, _ in parts)}, got {parts[0][1]}"
    return "; or ".join(messages)
