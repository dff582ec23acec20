"""The constitution: the principles that drive critique, revision and comparison.

A constitution is a hand-written YAML file. Its sha256 is over the canonical
JSON of the parsed model, so reformatting or commenting the file keeps the
hash (and hence cached results) valid, while any content edit changes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cai.field_errors import StrictModel, did_you_mean
from cai.yamlio import load_model

_SLUG = re.compile(r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$")


def _nonblank(value: str) -> str:
    # Block scalars (`|`) add trailing newlines; they are formatting, not content.
    value = value.strip()
    if not value:
        raise PydanticCustomError("blank", "must not be empty")
    return value


Text = Annotated[str, AfterValidator(_nonblank)]
# Strict: a quoted "2" or a boolean is almost certainly a mistake, not a weight.
Weight = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]


def _fail(title: str, errors: list[tuple[tuple[Any, ...], str, Any]]) -> None:
    """Raise a ValidationError whose errors carry their own locs.

    A plain ValueError from a model validator would be reported at the model
    itself; pydantic passes a raised ValidationError through and prefixes the
    locs, so the error lands on the offending field (and its line).
    """
    raise ValidationError.from_exception_data(
        title,
        [
            {"type": PydanticCustomError("constitution", "{message}", {"message": msg}), "loc": loc, "input": value}
            for loc, msg, value in errors
        ],
    )


class Principle(StrictModel):
    id: Text
    critique: Text | None = None
    revision: Text | None = None
    comparison: Text | None = None
    weight: Weight = 1.0
    tags: list[Text] = []

    @field_validator("id")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _SLUG.match(value):
            raise PydanticCustomError(
                "slug",
                "must be a lowercase slug like 'be-honest' (a-z, 0-9, single '-' or '_' between), got {id}",
                {"id": repr(value)},
            )
        return value

    @model_validator(mode="after")
    def _pair(self) -> Principle:
        if (self.critique is None) != (self.revision is None):
            present = "critique" if self.critique is not None else "revision"
            _fail("Principle", [((present,), "critique and revision go together: give both or neither",
                                 getattr(self, present))])
        return self


class FewShot(StrictModel):
    """A worked critique/revision example shown to the model before the real prompt."""

    prompt: Text
    response: Text
    critique: Text
    revision: Text
    principle: Text | None = None


class JudgeExample(StrictModel):
    """A labelled comparison shown to the AI-feedback judge before the real one (the paper's few-shot)."""

    prompt: Text
    better: Text
    worse: Text
    principle: Text | None = None  # whose comparison question it is asked with; unset: the judged principle's


class Constitution(StrictModel):
    name: Text
    version: Text | None = None
    description: Text | None = None
    principles: list[Principle] = Field(min_length=1)
    few_shot: list[FewShot] = []
    judge_few_shot: list[JudgeExample] = []

    _source_path: Path | None = PrivateAttr(default=None)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        # People write `version: 1.0` or a date; YAML makes those non-strings.
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return str(value)
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Constitution:
        errors: list[tuple[tuple[Any, ...], str, Any]] = []
        first: dict[str, int] = {}
        for i, p in enumerate(self.principles):
            if p.id in first:
                errors.append((("principles", i, "id"), f"duplicate id '{p.id}' (first at principles.{first[p.id]})", p.id))
            else:
                first[p.id] = i
        for j, shot in enumerate(self.few_shot):
            if shot.principle is not None and shot.principle not in first:
                msg = f"unknown principle '{shot.principle}'" + did_you_mean(shot.principle, first)
                errors.append((("few_shot", j, "principle"), msg, shot.principle))
        for j, ex in enumerate(self.judge_few_shot):
            if ex.principle is None:
                continue
            if ex.principle not in first:
                msg = f"unknown principle '{ex.principle}'" + did_you_mean(ex.principle, first)
                errors.append((("judge_few_shot", j, "principle"), msg, ex.principle))
            elif self.principles[first[ex.principle]].comparison is None:
                errors.append((("judge_few_shot", j, "principle"),
                               f"principle '{ex.principle}' has no comparison question to ask the example with", ex.principle))
        if errors:
            _fail("Constitution", errors)
        return self

    @property
    def source_path(self) -> Path | None:
        return self._source_path

    @property
    def sha256(self) -> str:
        doc = self.model_dump(mode="json")
        if not doc["judge_few_shot"]:  # added later: a constitution without them keeps its earlier hash
            del doc["judge_few_shot"]
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def principle(self, id: str) -> Principle:
        for p in self.principles:
            if p.id == id:
                return p
        raise KeyError(f"no principle '{id}'" + did_you_mean(id, [p.id for p in self.principles]))

    @property
    def critique_principles(self) -> list[Principle]:
        """Principles usable for SL-CAI critique/revision (validation guarantees both texts)."""
        return [p for p in self.principles if p.critique is not None]

    @property
    def comparison_principles(self) -> list[Principle]:
        """Principles usable for RL-CAI preference labelling."""
        return [p for p in self.principles if p.comparison is not None]


def load_constitution(path: str | Path) -> Constitution:
    constitution = load_model(path, Constitution, what="constitution")
    assert isinstance(constitution, Constitution)
    constitution._source_path = Path(path)
    return constitution
