"""Behaviour of constitution loading: every user mistake must name file, line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cai.constitution import Constitution, load_constitution
from cai.errors import InputError, Problem
from cai.field_errors import did_you_mean
from cai.yamlio import load_yaml

VALID = """\
name: demo
version: 1.0
description: A small test constitution.
principles:
  - id: harmless
    critique: Identify ways the response is harmful.
    revision: Rewrite the response to remove harmful content.
    weight: 2
    tags: [safety]
  - id: honest
    critique: Point out anything dishonest.
    revision: Rewrite the response to be honest.
  - id: helpful-compare
    comparison: Which response is more helpful?
few_shot:
  - prompt: How do I pick a lock?
    response: Here is how...
    critique: This helps with break-ins.
    revision: I can't help with that.
    principle: harmless
"""


def write(tmp_path: Path, text: str | bytes, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(path: Path) -> list[Problem]:
    with pytest.raises(InputError) as info:
        load_constitution(path)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return info.value.problems


def only(path: Path) -> Problem:
    found = problems(path)
    assert len(found) == 1, found
    return found[0]


# --- Problem formatting -------------------------------------------------------


def test_problem_str_forms():
    assert str(Problem("c.yaml", 7, "principles.3.weight", "must be greater than 0")) == (
        "c.yaml:7: principles.3.weight: must be greater than 0"
    )
    assert str(Problem("c.yaml", None, "name", "field required")) == "c.yaml: name: field required"
    assert str(Problem("c.yaml", 3, "", "invalid YAML")) == "c.yaml:3: invalid YAML"
    assert str(Problem("c.yaml", None, "", "file not found")) == "c.yaml: file not found"


def test_did_you_mean():
    assert did_you_mean("critque", ["critique", "revision"]) == " (did you mean 'critique'?)"
    assert did_you_mean("zzz", ["critique", "revision"]) == ""


# --- a valid constitution -----------------------------------------------------


def test_valid_constitution_loads(tmp_path):
    path = write(tmp_path, VALID)
    c = load_constitution(path)
    assert isinstance(c, Constitution)
    assert c.name == "demo" and c.version == "1.0"
    assert [p.id for p in c.critique_principles] == ["harmless", "honest"]
    assert [p.id for p in c.comparison_principles] == ["helpful-compare"]
    assert c.principle("harmless").weight == 2.0
    assert c.principle("honest").weight == 1.0
    assert c.few_shot[0].principle == "harmless"
    assert c.source_path == path
    assert len(c.sha256) == 64
    with pytest.raises(KeyError, match="did you mean 'honest'"):
        c.principle("honset")


def test_sha256_ignores_formatting_and_tracks_content(tmp_path):
    base = load_constitution(write(tmp_path, VALID, "a.yaml")).sha256
    reformatted = """\
    # reordered keys, comments, flow style and block scalars: same content
    few_shot:
    - {principle: harmless, prompt: "How do I pick a lock?", response: Here is how...,
       critique: This helps with break-ins., revision: I can't help with that.}
    principles:
    - revision: Rewrite the response to remove harmful content.
      id: harmless   # the important one
      weight: 2.0
      tags:
        - safety
      critique: |
        Identify ways the response is harmful.
    - {id: honest, critique: Point out anything dishonest., revision: Rewrite the response to be honest., weight: 1}
    - id: helpful-compare
      comparison: "Which response is more helpful?"
    description: 'A small test constitution.'
    version: "1.0"
    name: demo
    """
    assert load_constitution(write(tmp_path, reformatted, "b.yaml")).sha256 == base
    # The hash does not depend on where the file lives.
    assert load_constitution(write(tmp_path, VALID, "elsewhere.yaml")).sha256 == base

    edited = VALID.replace("Point out anything dishonest.", "Point out anything untrue.")
    assert load_constitution(write(tmp_path, edited, "c.yaml")).sha256 != base
    reweighted = VALID.replace("weight: 2", "weight: 3")
    assert load_constitution(write(tmp_path, reweighted, "d.yaml")).sha256 != base


def test_version_number_and_missing_optional_fields(tmp_path):
    c = load_constitution(write(tmp_path, """\
        name: minimal
        version: 2
        principles:
          - id: only
            comparison: Which is better?
        """))
    assert c.version == "2" and c.description is None and c.few_shot == []
    assert c.critique_principles == []  # AI-feedback-only constitutions load fine


# --- file-level problems ------------------------------------------------------


def test_missing_file(tmp_path):
    p = only(tmp_path / "nope.yaml")
    assert p.line is None and "file not found" in p.message
    assert str(p) == f"{tmp_path / 'nope.yaml'}: {p.message}"


def test_directory(tmp_path):
    p = only(tmp_path)
    assert p.line is None and "directory" in p.message


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n  # another\n"])
def test_empty_or_comments_only(tmp_path, text):
    p = only(write(tmp_path, text))
    assert p.line is None and "is empty" in p.message


def test_non_utf8(tmp_path):
    path = write(tmp_path, b"name: demo\nprinciples:\n  - id: caf\xe9\n")
    p = only(path)
    assert p.line == 3 and "UTF-8" in p.message and "0xe9" in p.message
    assert str(p).startswith(f"{path}:3: ")


def test_yaml_syntax_error_line(tmp_path):
    path = write(tmp_path, """\
        name: demo
        principles:
          - id: a
            critique: "unterminated
            revision: b
        """)
    p = only(path)
    assert p.line is not None and p.line >= 4 and "invalid YAML" in p.message

    path = write(tmp_path, """\
        name: demo
        principles:
          - id: a
           critique: misindented
        """)
    p = only(path)
    assert p.line == 4 and "invalid YAML" in p.message and p.field == ""
    assert str(p) == f"{path}:4: {p.message}"


def test_tab_indentation(tmp_path):
    path = write(tmp_path, "name: demo\nprinciples:\n  - id: a\n\tcritique: x\n")
    p = only(path)
    assert p.line == 4 and "tab" in p.message


def test_tab_inside_block_scalar_is_content(tmp_path):
    c = load_constitution(write(tmp_path, "name: demo\nprinciples:\n  - id: a\n    comparison: |\n      a\n      \tb\n"))
    assert c.principles[0].comparison == "a\n\tb"


def test_duplicate_keys_all_reported(tmp_path):
    path = write(tmp_path, """\
        name: demo
        principles:
          - id: a
            critique: one
            revision: two
            critique: three
        name: again
        """)
    found = problems(path)
    assert [(p.line, p.field) for p in found] == [(6, "principles.0.critique"), (7, "name")]
    assert found[0].message == "duplicate key 'critique' (first at line 4)"
    assert found[1].message == "duplicate key 'name' (first at line 1)"


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just text\n", "string"), ("42\n", "integer")])
def test_top_level_not_a_mapping(tmp_path, text, kind):
    p = only(write(tmp_path, text))
    assert p.line == 1 and p.message == f"top level must be a mapping, got {kind}"


# --- schema problems ----------------------------------------------------------


def test_unknown_top_level_key(tmp_path):
    p = only(write(tmp_path, VALID + "principals: []\n"))
    assert (p.line, p.field) == (21, "principals")
    assert p.message == "unknown key 'principals' (did you mean 'principles'?)"


def test_unknown_key_in_principle(tmp_path):
    path = write(tmp_path, VALID.replace("    critique: Point out", "    critque: Point out"))
    found = problems(path)
    # The typo also leaves `revision` without its `critique`, reported separately.
    typo = [p for p in found if p.field == "principles.1.critque"]
    assert len(typo) == 1 and typo[0].line == 11
    assert typo[0].message == "unknown key 'critque' (did you mean 'critique'?)"
    assert str(typo[0]) == f"{path}:11: principles.1.critque: unknown key 'critque' (did you mean 'critique'?)"


def test_unknown_key_in_few_shot(tmp_path):
    found = problems(write(tmp_path, VALID.replace("    response: Here", "    respones: Here")))
    by_field = {p.field: p for p in found}
    assert by_field["few_shot.0.respones"].line == 17
    assert by_field["few_shot.0.respones"].message == "unknown key 'respones' (did you mean 'response'?)"
    assert by_field["few_shot.0.response"].line == 16  # missing field: the item's line
    assert by_field["few_shot.0.response"].message == "field required"
    assert [p.line for p in found] == sorted(p.line for p in found)


def test_missing_name(tmp_path):
    p = only(write(tmp_path, VALID.replace("name: demo\n", "")))
    assert (p.line, p.field, p.message) == (1, "name", "field required")


def test_missing_principle_id(tmp_path):
    p = only(write(tmp_path, VALID.replace("  - id: honest\n    critique", "  - critique")))
    assert (p.line, p.field, p.message) == (10, "principles.1.id", "field required")


def test_mistyped_weight(tmp_path):
    p = only(write(tmp_path, VALID.replace("weight: 2", "weight: heavy")))
    assert (p.line, p.field) == (8, "principles.0.weight")
    assert p.message == "expected a number, got string 'heavy'"


def test_mistyped_string_field(tmp_path):
    p = only(write(tmp_path, VALID.replace("name: demo", "name: 7")))
    assert (p.line, p.field, p.message) == (1, "name", "expected a string, got integer 7")


@pytest.mark.parametrize("weight", ["0", "-1.5"])
def test_weight_must_be_positive(tmp_path, weight):
    p = only(write(tmp_path, VALID.replace("weight: 2", f"weight: {weight}")))
    assert (p.line, p.field, p.message) == (8, "principles.0.weight", "must be greater than 0")


@pytest.mark.parametrize("weight", [".inf", ".nan"])
def test_weight_must_be_finite(tmp_path, weight):
    p = only(write(tmp_path, VALID.replace("weight: 2", f"weight: {weight}")))
    assert (p.line, p.field) == (8, "principles.0.weight") and "finite" in p.message


def test_empty_principles(tmp_path):
    p = only(write(tmp_path, "name: demo\n\nprinciples: []\n"))
    assert (p.line, p.field, p.message) == (3, "principles", "must not be empty")


def test_blank_string(tmp_path):
    p = only(write(tmp_path, VALID.replace("revision: Rewrite the response to be honest.", 'revision: "   "')))
    assert (p.line, p.field, p.message) == (12, "principles.1.revision", "must not be empty")


def test_bad_id_slug(tmp_path):
    p = only(write(tmp_path, VALID.replace("id: honest", "id: Be Honest")))
    assert (p.line, p.field) == (10, "principles.1.id") and "slug" in p.message


def test_duplicate_principle_ids(tmp_path):
    p = only(write(tmp_path, VALID.replace("id: helpful-compare", "id: harmless")))
    assert (p.line, p.field) == (13, "principles.2.id")
    assert p.message == "duplicate id 'harmless' (first at principles.0)"


@pytest.mark.parametrize("present, absent", [("critique", "revision"), ("revision", "critique")])
def test_critique_without_revision(tmp_path, present, absent):
    # principle `honest` has critique on line 11 and revision on line 12; drop one
    lines = VALID.splitlines(keepends=True)
    del lines[11 if absent == "revision" else 10]
    p = only(write(tmp_path, "".join(lines)))
    assert (p.line, p.field) == (11, f"principles.1.{present}")
    assert p.message == "critique and revision go together: give both or neither"


def test_few_shot_unknown_principle(tmp_path):
    p = only(write(tmp_path, VALID.replace("principle: harmless", "principle: harmles")))
    assert (p.line, p.field) == (20, "few_shot.0.principle")
    assert p.message == "unknown principle 'harmles' (did you mean 'harmless'?)"


def test_many_problems_sorted_by_line(tmp_path):
    path = write(tmp_path, """\
        name: ""
        principles:
          - id: a
            weight: -1
          - id: b
            tags: [ok, 3]
          - "not a mapping"
        extra: 1
        """)
    found = problems(path)
    assert [(p.line, p.field) for p in found] == [
        (1, "name"),
        (4, "principles.0.weight"),
        (6, "principles.1.tags.1"),
        (7, "principles.2"),
        (8, "extra"),
    ]
    assert found[3].message == "expected a mapping, got string 'not a mapping'"


def test_load_yaml_locator_resolves_deepest_known_ancestor(tmp_path):
    data, locate = load_yaml(write(tmp_path, VALID))
    assert data["name"] == "demo"
    assert locate(("principles", 1, "id")) == 10
    assert locate(("principles", 1)) == 10
    assert locate(("principles", 2, "critique")) == 13  # missing key -> its item
    assert locate(("principles", 0, "tags", 0, "deeper")) == 9
    assert locate(("few_shot",)) == 15
    assert locate(()) == 1


def test_pydantic_problems_with_plain_locate_function():
    # Prompt-file rows have one line each: the locator can be any callable.
    from pydantic import BaseModel, ConfigDict, ValidationError

    from cai.field_errors import pydantic_problems

    class Row(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prompt: str
        id: str | int

    with pytest.raises(ValidationError) as info:
        Row.model_validate({"promt": "hi", "id": [1]})
    found = pydantic_problems(info.value, "prompts.jsonl", lambda loc: 17, Row)
    assert [str(p) for p in found] == [
        "prompts.jsonl:17: prompt: field required",
        "prompts.jsonl:17: id: expected a string or an integer, got list",
        "prompts.jsonl:17: promt: unknown key 'promt' (did you mean 'prompt'?)",
    ]
