"""Bad pipelines, constitutions and prompt files: exit 2, one `FILE:LINE: field: message` line
per problem, no traceback, nothing written to the run directory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cai.config import PromptSource, load_pipeline
from cai.errors import InputError, Problem
from cai.prompts import load_prompts

REPO = Path(__file__).resolve().parent.parent
CONSTITUTION = """\
name: tiny
principles:
  - id: careful
    critique: Point out anything harmful.
    revision: Rewrite it without the harm.
    comparison: Which reply is less harmful?
"""
# Three problems, on lines 6, 8 and 9.
BAD_CONSTITUTION = """\
name: tiny
principles:
  - id: careful
    critique: Point out anything harmful.
    revision: Rewrite it without the harm.
    weight: -1
  - id: second
    critque: typo
    tags: {a: 1}
"""
# `error: FILE:LINE: field.path: message`; the line is absent only for whole-file or flag problems,
# the field only for problems with no field (e.g. invalid JSON).
PROBLEM_LINE = re.compile(
    r"^error: (?P<file>[^:\s][^:]*)(?::(?P<line>\d+))?: (?:(?P<field>[\w.-]+): )?(?P<msg>\S.*)$")


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content, encoding="utf-8")
    return path


def jsonl(path: Path, *rows: dict | str) -> Path:
    return write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def pipeline(directory: Path, name: str = "p.yaml", **fields: str | None) -> tuple[Path, str]:
    """A scripted pipeline (YAML values given as text) next to a valid constitution and prompt file."""
    if not (directory / "c.yaml").exists():
        write(directory / "c.yaml", CONSTITUTION)
        jsonl(directory / "a.jsonl", {"id": "a1", "prompt": "Hello?"}, {"id": "a2", "prompt": "Why?"})
    values = {"name": "t", "constitution": "c.yaml", "policy": "{backend: scripted}", "prompts": "[a.jsonl]",
              "rounds": "1", **fields}
    text = "".join(f"{k}: {v}\n" for k, v in values.items() if v is not None)
    return write(directory / name, text), text


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def pipeline_problems(path: Path, **overrides) -> list[Problem]:
    with pytest.raises(InputError) as info:
        load_pipeline(path, **overrides)
    return info.value.problems


def prompt_problems(*paths: Path, **source) -> list[Problem]:
    with pytest.raises(InputError) as info:
        load_prompts([PromptSource(path=str(p), **source) for p in paths])
    return info.value.problems


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, problems
    return problems[0]


# --- pipeline files -------------------------------------------------------------


def test_valid_pipeline_loads_with_bare_string_prompts(tmp_path):
    path, _ = pipeline(tmp_path, prompts="a.jsonl")
    config = load_pipeline(path)
    assert [s.path for s in config.prompts] == [str(tmp_path / "a.jsonl")]
    assert config.policy.backend == "scripted" and config.rounds == 1
    path, _ = pipeline(tmp_path, name="q.yaml", prompts="[a.jsonl, {path: a.jsonl, category: misc}]")
    sources = load_pipeline(path).prompts
    assert [s.path for s in sources] == [str(tmp_path / "a.jsonl")] * 2
    assert [s.category for s in sources] == [None, "misc"]


@pytest.mark.parametrize("fields, needle, field, message", [
    ({"rouds": "2"}, "rouds:", "rouds", "unknown key 'rouds' (did you mean 'rounds'?)"),
    ({"rounds": "many"}, "rounds:", "rounds", "expected an integer, got string 'many'"),
    ({"rounds": "0"}, "rounds:", "rounds", "must be at least 1"),
    ({"policy": "\n  backend: transformers\n  options: {batch_size: -1}"}, "batch_size:", "policy.options.batch_size",
     "must be greater than 0"),
    ({"policy": "{backend: openai, options: {base_uri: x}}"}, "base_uri", "policy.options.base_uri",
     "unknown key 'base_uri' (did you mean 'base_url'?)"),
    ({"prompts": "[]"}, "prompts:", "prompts", "must not be empty"),
    ({"policy": "{backend: gpu}"}, "policy:", "policy", "unknown backend (one of auto, transformers, vllm, openai"),
    # Keys from before model specs name their new place.
    ({"policy": None, "backend": "scripted"}, "backend:", "backend", "moved: write it as policy.backend"),
    ({"batch_size": "4"}, "batch_size:", "batch_size", "moved: write it as policy.options.batch_size"),
    ({"judge": "{model: x, base_url: y}"}, "judge:", "judge.base_url", "moved: model settings go under options"),
    ({"sampling": "\n  respond:\n    max_tokens: 9"}, "max_tokens:", "sampling.respond.max_tokens",
     "unknown key 'max_tokens' (did you mean 'max_new_tokens'?)"),
])
def test_pipeline_problem_names_line_and_field(tmp_path, fields, needle, field, message):
    path, text = pipeline(tmp_path, **fields)
    problem = only(pipeline_problems(path))
    assert (problem.file, problem.line, problem.field) == (str(path), line_of(text, needle), field)
    assert problem.message.startswith(message)


def test_missing_constitution_and_all_problems_at_once(tmp_path):
    path, _ = pipeline(tmp_path, constitution=None, rounds="0", limit="0")
    found = {p.field: p for p in pipeline_problems(path)}
    assert set(found) == {"constitution", "rounds", "limit"}
    assert found["constitution"].message == "field required"


def test_paths_are_relative_to_the_pipeline_file_and_flags_to_cwd(tmp_path, monkeypatch):
    path, _ = pipeline(tmp_path / "pipes")
    monkeypatch.chdir(tmp_path)
    config = load_pipeline(Path("pipes/p.yaml"))
    assert config.constitution == str(tmp_path / "pipes" / "c.yaml")
    assert [s.path for s in config.prompts] == [str(tmp_path / "pipes" / "a.jsonl")]
    flagged = load_pipeline(Path("pipes/p.yaml"), prompts=["x.jsonl", "hf:org/set"], constitution="k.yaml")
    assert [s.path for s in flagged.prompts] == [str(tmp_path / "x.jsonl"), "hf:org/set"]
    assert flagged.constitution == str(tmp_path / "k.yaml")


def test_cli_overrides_apply_and_are_revalidated(tmp_path):
    path, _ = pipeline(tmp_path, rounds="2", limit="5", policy="{backend: transformers}")
    config = load_pipeline(path, rounds=3, batch_size=4, limit=None)
    assert (config.rounds, config.policy.options.batch_size, config.limit) == (3, 4, 5)
    problem = only(pipeline_problems(path, rounds=0))
    assert problem.field == "--rounds" and "1" in problem.message
    assert str(problem).startswith("command line: --rounds: ")
    assert only(pipeline_problems(path, batch_size=0)).field == "--batch-size"
    # Model flags set the policy's spec; the judge's unset fields follow it.
    config = load_pipeline(path, backend="openai", model="m", base_url="http://h/v1", judge_model="j")
    assert (config.policy.backend, config.policy.model, config.policy.options.base_url) == ("openai", "m", "http://h/v1")
    assert (config.judge.backend, config.judge.model, config.judge.options.base_url) == ("openai", "j", "http://h/v1")
    assert str(only(pipeline_problems(path, backend="scripted", base_url="u"))) == (
        "command line: --base-url: the scripted backend has no such option")


# --- prompt files -----------------------------------------------------------------


@pytest.mark.parametrize("lines, line, field, message", [
    (['{"prompt": "a"}', '{"prompt": "b"}', '{"prompt": "c",'], 3, "", "invalid JSON"),
    (['{"prompt": "a"}', '["not", "an", "object"]'], 2, "", "expected a JSON object, got list"),
    (['{"prompt": "a"}', '{"text": "b"}'], 2, "prompt", "field required"),
    (['{"prompt": "  "}'], 1, "prompt", "must be a non-empty string"),
    (['{"id": "x", "prompt": "a"}', '{"id": "y", "prompt": "b"}', '{"id": "x", "prompt": "c"}'],
     3, "id", "duplicate id 'x' (first at p.jsonl:1)"),
])
def test_jsonl_problem_names_file_and_line(tmp_path, lines, line, field, message):
    path = jsonl(tmp_path / "p.jsonl", *lines)
    problem = only(prompt_problems(path))
    assert (problem.file, problem.line, problem.field) == (str(path), line, field)
    assert message in problem.message
    assert str(problem).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize("name", ["p.jsonl", "p.csv"])
def test_non_utf8_names_the_line(tmp_path, name):
    head = b'{"prompt": "fine"}\n' if name.endswith("jsonl") else b"prompt\nfine\n"
    path = write(tmp_path / name, head + b"caf\xe9\n")
    problem = only(prompt_problems(path))
    assert problem.line == (2 if name.endswith("jsonl") else 3) and "UTF-8" in problem.message


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", "\n\n", "no prompts"),
    ("gone.jsonl", None, "not found"),
    ("notes.txt", "hello", "unknown prompt format"),
    ("dir.jsonl", "DIR", "cannot read"),
    ("broken.parquet", "not parquet at all", "cannot read parquet"),
])
def test_unusable_file_is_one_problem(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "DIR":
        path.mkdir()
    elif content is not None:
        write(path, content)
    problem = only(prompt_problems(path))
    assert problem.file == str(path) and message in problem.message


def test_problems_from_every_file_are_reported_together(tmp_path):
    a = jsonl(tmp_path / "a.jsonl", {"prompt": "ok"}, {"text": "no prompt"}, {"prompt": "ok 2"}, "{broken")
    empty = write(tmp_path / "empty.jsonl", "")
    found = [(p.file, p.line) for p in prompt_problems(a, empty)]
    assert found == [(str(a), 2), (str(a), 4), (str(empty), None)]


def test_csv_with_header_keeps_line_numbers_and_bom(tmp_path):
    path = write(tmp_path / "p.csv", '\ufeffid,prompt,category\nq1,"two\nlines",misc\nq2,,misc\nq3,Fine?,\n')
    problem = only(prompt_problems(path))
    assert (problem.line, problem.field) == (4, "prompt")  # header 1, q1 on 2-3, q2 on 4
    write(path, '\ufeffid,prompt,category\nq1,"two\nlines",misc\nq3,Fine?,\n')
    rows = load_prompts([PromptSource(path=str(path), category="dflt")])
    assert [(r["id"], r["prompt"], r["category"]) for r in rows] == [("q1", "two\nlines", "misc"), ("q3", "Fine?", "dflt")]


def test_parquet_missing_prompt_names_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a", None, "c"], "category": ["x", "y", "z"]}), path)
    problem = only(prompt_problems(path))
    assert (problem.file, problem.line, problem.field) == (str(path), None, "row 2: prompt")
    pq.write_table(pa.table({"prompt": ["a", "c"], "category": ["x", "z"]}), path)
    rows = load_prompts([PromptSource(path=str(path))])
    assert [(r["prompt"], r["category"], r["source"]) for r in rows] == [("a", "x", "p.parquet"), ("c", "z", "p.parquet")]


def test_ids_derived_from_text_are_stable_when_rows_move(tmp_path):
    one = jsonl(tmp_path / "one.jsonl", {"prompt": "Alpha?"}, {"prompt": "Beta?", "id": 7})
    two = jsonl(tmp_path / "two.jsonl", {"prompt": "Gamma?"}, {"prompt": "Alpha?"})
    first = {r["prompt"]: r["id"] for r in load_prompts([PromptSource(path=str(one))])}
    second = {r["prompt"]: r["id"] for r in load_prompts([PromptSource(path=str(two))])}
    assert first["Beta?"] == "7"
    assert first["Alpha?"] == second["Alpha?"] and re.fullmatch(r"p-[0-9a-f]{12}", first["Alpha?"])
    assert second["Gamma?"] != second["Alpha?"]


def test_limit_takes_round_robin_and_keeps_categories(tmp_path):
    a = jsonl(tmp_path / "a.jsonl", *({"id": f"A{i}", "prompt": f"a{i}", "category": "red"} for i in (1, 2, 3)))
    b = jsonl(tmp_path / "b.jsonl", *({"id": f"B{i}", "prompt": f"b{i}"} for i in (1, 2, 3)))
    rows = load_prompts([PromptSource(path=str(a)), PromptSource(path=str(b), category="calm")], limit=4)
    assert [r["id"] for r in rows] == ["A1", "B1", "A2", "B2"]
    assert [r["category"] for r in rows] == ["red", "calm", "red", "calm"]
    assert [r["source"] for r in rows] == ["a.jsonl", "b.jsonl"] * 2


# --- the command line ---------------------------------------------------------------


def cai(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cai", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def problem_lines(result: subprocess.CompletedProcess) -> list[re.Match]:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    matches = [PROBLEM_LINE.match(line) for line in lines]
    assert all(matches), lines
    return matches


def test_cli_validate_good_and_bad_constitution(tmp_path):
    write(tmp_path / "good.yaml", CONSTITUTION)
    write(tmp_path / "bad.yaml", BAD_CONSTITUTION)
    ok = cai("validate", "good.yaml", cwd=tmp_path)
    assert ok.returncode == 0 and "ok: good.yaml" in ok.stderr
    found = problem_lines(cai("validate", "bad.yaml", cwd=tmp_path))
    assert [(m["file"], int(m["line"]), m["field"]) for m in found] == [
        ("bad.yaml", 6, "principles.0.weight"), ("bad.yaml", 8, "principles.1.critque"), ("bad.yaml", 9, "principles.1.tags")]


def test_cli_validate_follows_pipeline_to_constitution_and_prompts(tmp_path):
    write(tmp_path / "bad.yaml", BAD_CONSTITUTION)
    jsonl(tmp_path / "b.jsonl", {"prompt": "a"}, {"prompt": "b"}, "{oops")
    pipeline(tmp_path, constitution="bad.yaml", prompts="[b.jsonl]")
    found = problem_lines(cai("validate", "p.yaml", cwd=tmp_path))
    assert [(m["file"], m["line"]) for m in found] == [
        (str(tmp_path / "bad.yaml"), "6"), (str(tmp_path / "bad.yaml"), "8"), (str(tmp_path / "bad.yaml"), "9"),
        (str(tmp_path / "b.jsonl"), "3")]


def test_cli_validate_broken_prompt_file(tmp_path):
    jsonl(tmp_path / "b.jsonl", {"prompt": "a"}, {"prompt": "b"}, '{"prompt": "c",')
    (found,) = problem_lines(cai("validate", "b.jsonl", cwd=tmp_path))
    assert (found["file"], found["line"], found["field"]) == ("b.jsonl", "3", None)
    assert found["msg"].startswith("invalid JSON")


def test_cli_generate_writes_nothing_on_bad_input(tmp_path):
    good, _ = pipeline(tmp_path, name="good.yaml")
    pipeline(tmp_path, name="bad.yaml", rouds="1")
    jsonl(tmp_path / "broken.jsonl", {"prompt": "a"}, {"prompt": "b"}, "{oops")
    problem_lines(cai("generate", "bad.yaml", "--out", "OUT", cwd=tmp_path))
    assert not (tmp_path / "OUT").exists()
    problem_lines(cai("generate", "good.yaml", "--prompts", "broken.jsonl", "--out", "OUT", cwd=tmp_path))
    assert not (tmp_path / "OUT").exists()
    (found,) = problem_lines(cai("generate", "good.yaml", "--rounds", "0", "--out", "OUT", cwd=tmp_path))
    assert (found["file"], found["field"]) == ("command line", "--rounds")
    assert not (tmp_path / "OUT").exists()
    # The same command with good input does create OUT, so the checks above mean something.
    run = cai("generate", "good.yaml", "--out", "OUT", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "OUT" / "run.json").exists()


def test_cli_rounds_flag_and_debug_traceback(tmp_path):
    pipeline(tmp_path)
    (plain,) = problem_lines(cai("generate", "p.yaml", "--rounds", "0", "--out", "OUT", cwd=tmp_path))
    assert plain["field"] == "--rounds"
    debug = cai("--debug", "generate", "p.yaml", "--rounds", "0", "--out", "OUT", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "InputError" in debug.stderr
    assert not (tmp_path / "OUT").exists()


# --- what ships ---------------------------------------------------------------------


def test_shipped_files_validate_clean():
    files = ["constitution/harmless.yaml", "constitution/helpful-honest.yaml", "pipelines/default.yaml",
             "pipelines/prompts/red_team.jsonl", "pipelines/prompts/benign.jsonl"]
    result = cai("validate", *files, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("ok: ") == len(files)


def test_shipped_prompt_sets_are_big_enough():
    def rows(name):
        lines = (REPO / "pipelines" / "prompts" / name).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    red, benign = rows("red_team.jsonl"), rows("benign.jsonl")
    for row in red + benign:
        assert isinstance(row.get("id"), str) and row["prompt"].strip() and row.get("category"), row
    assert len(red) >= 200 and len(benign) >= 100
    assert sum(r["category"] == "looks-sensitive" for r in benign) >= 25
    assert len({r["id"] for r in red + benign}) == len(red) + len(benign)


def test_generate_with_a_missing_model_folder_exits_2(tmp_path):
    pipeline = tmp_path / "p"
    from helpers import write_pipeline

    path = write_pipeline(pipeline, backend="transformers")
    res = subprocess.run([sys.executable, "-m", "cai", "generate", str(path), "--model", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "OUT")], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: --model: {tmp_path / 'nope'}: no such checkpoint directory"]
    assert not (tmp_path / "OUT").exists()


def test_a_backend_whose_extra_is_missing_names_the_extra(tmp_path, monkeypatch):
    import builtins

    from helpers import write_pipeline
    from cai.generate import generate

    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ModuleNotFoundError("No module named 'vllm'", name="vllm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    monkeypatch.delitem(sys.modules, "cai.backends.vllm_local", raising=False)
    config = load_pipeline(write_pipeline(tmp_path, backend="vllm", model="embedded"))
    with pytest.raises(InputError) as err:
        generate(config)
    assert str(err.value) == "backend: backend 'vllm' needs vllm: pip install 'cai-engine[vllm]'"
    assert not (tmp_path / "out").exists()
