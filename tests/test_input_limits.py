"""Nothing cut, nothing misnamed (issue 12, points 10 and 12): prompts too long for the policy model
are rejected at input check with their file and line, before any weights load; a conversation that
outgrows the limit later fails its record with the reason instead of being cut silently; a CSV
without a header row and a duplicate prompt without ids are named as the user wrote them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cai import cli
from cai.backends import CallFailed, Sampling, prompt_ids
from cai.config import load_pipeline
from cai.prompts import load_prompts
from helpers import records_by_id, run, write_pipeline

LONG = "word " * 5000  # about 5,000 tokens: more than the 4,096 the transformers backend takes


def overlong_prompts(config, examples):
    from cai.backends.context import overlong_prompts as check  # new with these tests

    return check(config, examples)


def cai(*args):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def jsonl(path: Path, *rows: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer(embedded):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded.path)


@pytest.fixture(scope="module")
def model(embedded):
    from cai.backends import create

    return create("transformers", model="embedded")


def no_weights(monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


# --- 10a. an over-long prompt is bad input, told before any weights load ---------------------------


@pytest.mark.parametrize("system_prompt", [None, "You answer in one short paragraph."])
def test_overlong_prompt_is_rejected_at_input_check(tmp_path, monkeypatch, tokenizer, system_prompt):
    prompts = jsonl(tmp_path / "prompts.jsonl", {"prompt": "Hello?"}, {"prompt": LONG}, {"prompt": "Bye?"})
    extra = {"system_prompt": system_prompt} if system_prompt else {}
    pipeline = write_pipeline(tmp_path, backend="transformers", model="embedded", **extra)
    no_weights(monkeypatch)
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    n = len(prompt_ids(tokenizer, system + [{"role": "user", "content": LONG}]))
    expected = (f"error: {prompts}:2: prompt: is {n} tokens; the policy model takes at most 4096 input tokens "
                "(policy.options.max_input_tokens)")
    for args in ([], ["--plan"]):
        result = cai("generate", pipeline, *args)
        assert result.exit_code == 2, result.output
        assert error_lines(result) == [expected]
    assert not (tmp_path / "out").exists()


def test_vllm_limit_leaves_room_for_the_reply(tmp_path, tokenizer):
    # 512 positions hold the prompt and the reply: with 160 new tokens for the respond stage,
    # a prompt of about 400 tokens does not fit, one of 300 does.
    prompts = jsonl(tmp_path / "prompts.jsonl", {"prompt": "word " * 300}, {"prompt": "word " * 400})
    config = load_pipeline(write_pipeline(tmp_path, backend="vllm", model="embedded", max_model_len=512))
    n = len(prompt_ids(tokenizer, [{"role": "user", "content": "word " * 400}]))
    (problem,) = overlong_prompts(config, load_prompts(config.prompts))
    assert str(problem) == (f"{prompts}:2: prompt: is {n} tokens; the policy model takes at most 352 input tokens "
                            "(policy.options.max_model_len 512 less 160 new tokens for the respond stage)")


@pytest.mark.parametrize("where, expected_line", [("jsonl", 2), ("parquet", None)])
def test_overlong_names_the_row_of_a_columnar_file(tmp_path, where, expected_line):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / f"p.{where}"
    if where == "jsonl":
        jsonl(path, {"prompt": "fine"}, {"prompt": LONG})
    else:
        pq.write_table(pa.table({"prompt": ["fine", LONG]}), path)
    config = load_pipeline(write_pipeline(tmp_path, backend="transformers", model="embedded", prompts=[path.name]))
    (problem,) = overlong_prompts(config, load_prompts(config.prompts))
    assert (problem.file, problem.line) == (str(path), expected_line)
    assert problem.field == ("prompt" if expected_line else "row 2: prompt")


def test_api_and_scripted_backends_leave_length_to_the_model(tmp_path):
    # An API server knows its own context and rejects what does not fit; the scripted stand-in has none.
    jsonl(tmp_path / "prompts.jsonl", {"prompt": LONG})
    result = cai("generate", write_pipeline(tmp_path))
    assert result.exit_code == 0, result.output
    config = load_pipeline(write_pipeline(tmp_path, backend="openai", model="m"))
    assert overlong_prompts(config, load_prompts(config.prompts)) == []


# --- 10b. a conversation that outgrows the limit later fails its record, with the reason ----------


SHORT = [{"role": "user", "content": "What is the capital of France?"}]
GROWN = SHORT + [{"role": "assistant", "content": "Paris. " * 20},
                 {"role": "user", "content": "Point out anything untrue in the last response."}]


def test_backend_returns_call_failed_instead_of_cutting(model):
    s = Sampling(max_new_tokens=8)
    model.max_input_tokens = 4096
    before = model.chat([SHORT], [s])[0]
    scores_before = [model.choice_logprobs([SHORT], choices)[0] for choices in (["A", "B"], ["(A)", "(B)"])]
    n = len(prompt_ids(model.tokenizer, GROWN))
    assert len(prompt_ids(model.tokenizer, SHORT)) <= 64 < n
    reason = f"conversation is {n} tokens; the model takes at most 64 input tokens (options.max_input_tokens)"
    try:
        model.max_input_tokens = 64
        progressed = []
        out = model.chat([GROWN, SHORT], [s, s], progress=progressed.append)
        assert isinstance(out[0], CallFailed) and str(out[0]) == reason
        assert out[1] == before and sum(progressed) == 2
        for choices, expected in zip((["A", "B"], ["(A)", "(B)"]), scores_before):
            progressed = []
            scores = model.choice_logprobs([GROWN, SHORT], choices, progress=progressed.append)
            assert isinstance(scores[0], CallFailed) and str(scores[0]) == reason
            assert scores[1] == pytest.approx(expected, abs=1e-4) and sum(progressed) == 4
    finally:
        model.max_input_tokens = 4096


class Spy:
    """The backend, with the token length of every conversation it is asked, call by call."""

    def __init__(self, inner):
        self.inner, self.identity, self.supports_logprobs, self.lengths = inner, inner.identity, True, []

    def chat(self, conversations, sampling, progress=None):
        self.lengths.append([len(prompt_ids(self.inner.tokenizer, c)) for c in conversations])
        return self.inner.chat(conversations, sampling, progress)

    def choice_logprobs(self, conversations, choices, progress=None):
        return self.inner.choice_logprobs(conversations, choices, progress)


def test_round_two_overflow_fails_the_record_with_the_reason(tmp_path, model):
    sampling = {k: {"max_new_tokens": 12} for k in ("respond", "critique", "revise")}
    spy = Spy(model)
    model.max_input_tokens = 4096
    whole = run(write_pipeline(tmp_path / "whole", n_prompts=1, backend="transformers", model="embedded",
                               sampling=sampling), backend=spy)
    assert whole["status"] == "complete"
    # Calls in order: respond, critique:1, revise:1, critique:2, revise:2 (one prompt each).
    fits, grown = spy.lengths[2][0], spy.lengths[3][0]
    assert grown > fits
    try:
        model.max_input_tokens = fits  # round 1 fits whole; round 2's critique does not
        pipeline = write_pipeline(tmp_path / "cut", n_prompts=1, backend="transformers", model="embedded",
                                  sampling=sampling)
        summary = run(pipeline, backend=Spy(model))
    finally:
        model.max_input_tokens = 4096
    reason = f"conversation is {grown} tokens; the model takes at most {fits} input tokens (options.max_input_tokens)"
    assert summary["status"] == "incomplete" and summary["counts"]["failed"] == 1
    assert summary["counts"]["errors"] == [{"id": "p-00000", "stage": "critique:2", "error": reason}]
    on_disk = json.loads((tmp_path / "cut" / "out" / "run.json").read_text())
    assert on_disk["counts"]["errors"] == summary["counts"]["errors"]
    assert records_by_id(tmp_path / "cut" / "out") == {}  # nothing to train on from a headless prompt
    assert summary["counts"]["records"] == 0


# --- 12b. a CSV without a header row --------------------------------------------------------------


def csv_run(tmp_path: Path, text: str, **source):
    path = tmp_path / "p.csv"
    path.write_text(text)
    return path, cai("generate", write_pipeline(tmp_path, prompts=[{"path": "p.csv", **source}]))


def test_csv_without_header_is_one_line(tmp_path):
    path, result = csv_run(tmp_path, "What is 2+2?,q1,math\nTell me a joke,q2,fun\nIs the sky blue?,q3,misc\n")
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: {path}:1: no header row: the first line must name the columns "
                                   "(e.g. prompt,id,category)"]
    assert not (tmp_path / "out").exists()


def test_csv_header_without_the_prompt_column_names_what_it_has(tmp_path):
    path, result = csv_run(tmp_path, "text,id\nWhat is 2+2?,q1\nTell me a joke,q2\n")
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: {path}:1: no 'prompt' column: the header row names text, id (name the "
                                   "prompt column 'prompt', or set field: in the pipeline's prompt source)"]


@pytest.mark.parametrize("text, source", [
    ("prompt,id,category\nWhat is 2+2?,q1,math\nTell me a joke,q2,\n", {}),
    ("\ufeffid,prompt\nq1,\"two\nlines\"\nq2,Tell me a joke\n", {}),
    ("prompt\nWhat is 2+2?\nTell me a joke\n", {}),
    ("question,notes\nWhat is 2+2?,x\nTell me a joke,y\n", {"field": "question"}),
])
def test_csv_with_header_still_runs(tmp_path, text, source):
    _, result = csv_run(tmp_path, text, **source)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "run.json").read_text())["counts"]["prompts"] == 2


# --- 12c. a duplicate prompt without ids names the user's lines -------------------------------------


def test_duplicate_prompt_without_ids_names_both_lines(tmp_path):
    a = jsonl(tmp_path / "prompts.jsonl", {"prompt": "Alpha?"}, {"prompt": "Beta?"}, {"prompt": "Alpha?"})
    b = jsonl(tmp_path / "more.jsonl", {"prompt": "Gamma?"}, {"prompt": "Beta?"})
    pipeline = write_pipeline(tmp_path)
    doc = yaml.safe_load(pipeline.read_text())
    pipeline.write_text(yaml.safe_dump({**doc, "prompts": ["prompts.jsonl", "more.jsonl"]}))
    result = cai("generate", pipeline)
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: {a}:3: prompt: duplicate of line 1",
                                   f"error: {b}:2: prompt: duplicate of {a}:2"]


def test_duplicate_id_still_names_the_id(tmp_path):
    a = jsonl(tmp_path / "prompts.jsonl", {"id": "x", "prompt": "Alpha?"}, {"id": "x", "prompt": "Beta?"})
    result = cai("generate", write_pipeline(tmp_path))
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: {a}:2: id: duplicate id 'x' (first at prompts.jsonl:1)"]


def test_a_byte_level_tokenizer_never_makes_more_tokens_than_bytes(tokenizer):
    # What lets the input check skip tokenizing a prompt with fewer bytes than the limit.
    from cai.backends.context import at_most_a_token_per_byte

    assert at_most_a_token_per_byte(tokenizer)
    texts = ["word " * 50, "😀" * 40 + "🇫🇷" * 10, "漢字かな交じり文" * 20, "e\u0301" * 60 + "\u200b" * 30,
             "\x00\x01\t\n  " * 30, "<|im_start|>" * 20, "".join(chr(c) for c in range(0x370, 0x700))]
    for conv in ([{"role": "user", "content": t}] for t in texts):
        text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= len(text.encode())


def test_the_limit_the_message_names_is_an_option_a_user_can_set(tmp_path):
    from typer.testing import CliRunner

    from cai import cli
    from helpers import write_pipeline

    pipeline = write_pipeline(tmp_path, n_prompts=2, backend="transformers", model="embedded", max_input_tokens=8)
    res = CliRunner().invoke(cli.app, ["generate", str(pipeline), "--plan"])
    assert res.exit_code == 2
    assert "prompts.jsonl:1: prompt: is " in res.stderr and "at most 8 input tokens" in res.stderr
