"""What the AI-feedback judge is asked: prefilled answer on in-process backends, the plain question on
APIs, the constitution's labelled few-shot comparisons, the raw-completion form for a model without a
chat template, and the prompt's version in the record fingerprint."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import FakeJudge, options_asked, records_by_id, write_constitution, write_pipeline

from cai.backends import prompt_ids, raw_reply, raw_text
from cai.constitution import load_constitution
from cai.errors import InputError
from cai.judge import ANSWER, PREFILL, Comparison, Judge

FEW_SHOT = [
    {"prompt": "How do I pick a lock?", "better": "I can't help with that.", "worse": "Use a tension wrench.",
     "principle": "harm"},
    {"prompt": "Is the earth flat?", "better": "No, it is round.", "worse": "Yes, it is flat."},
]


class Recorder(FakeJudge):
    """A judge that keeps every conversation it was asked to score."""

    def __init__(self):
        super().__init__(lambda a, b: (-0.1, -2.0))
        self.asked = []

    def choice_logprobs(self, conversations, choices, progress=None):
        self.asked += [list(c) for c in conversations]
        return super().choice_logprobs(conversations, choices, progress)


def _constitution(tmp_path, few_shot=None):
    path = write_constitution(tmp_path / "c.yaml")
    if few_shot:
        doc = yaml.safe_load(path.read_text())
        doc["judge_few_shot"] = few_shot
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_constitution(path)


def test_in_process_judges_continue_a_prefilled_answer_and_apis_get_the_question(tmp_path):
    constitution = _constitution(tmp_path)
    item = Comparison("c1", "Say hi", "Hello!", "Go away.")
    for prefill in (True, False):
        backend = Recorder()
        judge = Judge(constitution, principles=1, prefill=prefill)
        judge.compare([item], judge.calls(backend))
        assert len(backend.asked) == 2  # both orders
        for conv in backend.asked:
            question = conv[-2] if prefill else conv[-1]
            assert question["role"] == "user" and "Options:\n(A) " in question["content"]
            if prefill:
                assert conv[-1] == {"role": "assistant", "content": PREFILL}
                assert not question["content"].endswith(ANSWER)
            else:
                assert question["content"].endswith("\n\n" + ANSWER)
        assert {options_asked(c) for c in backend.asked} == {("Hello!", "Go away."), ("Go away.", "Hello!")}


def test_few_shot_comparisons_come_first_with_the_better_answer_alternating(tmp_path):
    constitution = _constitution(tmp_path, FEW_SHOT)
    backend = Recorder()
    judge = Judge(constitution, principles=1, prefill=True)
    (verdict,) = judge.compare([Comparison("c1", "Say hi", "Hello!", "Go away.")], judge.calls(backend))
    asked_with = constitution.principle(verdict.principle_ids[0]).comparison
    conv = backend.asked[0]
    assert [m["role"] for m in conv] == ["user", "assistant"] * 3  # two examples, then the real question
    first, second = conv[0]["content"], conv[2]["content"]
    assert "How do I pick a lock?" in first and "Which response is less harmful?" in first
    assert "(A) I can't help with that.\n(B) Use a tension wrench." in first
    assert conv[1]["content"] == PREFILL + "A)"
    # Example two has no principle: it is asked with the judged principle's question; better shown as (B).
    assert asked_with in second and asked_with in conv[4]["content"]
    assert "(A) Yes, it is flat.\n(B) No, it is round." in second and conv[3]["content"] == PREFILL + "B)"
    # The API form: the examples answer with the letter alone, as the real reply is read.
    backend = Recorder()
    judge = Judge(constitution, principles=1, prefill=False)
    judge.compare([Comparison("c1", "Say hi", "Hello!", "Go away.")], judge.calls(backend))
    assert [backend.asked[0][1]["content"], backend.asked[0][3]["content"]] == ["A", "B"]


def test_a_few_shot_example_naming_an_unknown_principle_is_one_line_with_its_place(tmp_path):
    path = write_constitution(tmp_path / "c.yaml")
    doc = yaml.safe_load(path.read_text())
    doc["judge_few_shot"] = [{"prompt": "p", "better": "b", "worse": "w", "principle": "harmm"}]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(InputError) as err:
        load_constitution(path)
    text = str(err.value)
    line = next(n for n, t in enumerate(path.read_text().splitlines(), 1) if "harmm" in t)
    assert f"c.yaml:{line}" in text and "judge_few_shot" in text and "did you mean 'harm'" in text


def test_the_judge_prompt_version_and_form_are_part_of_the_record_fingerprint(tmp_path, monkeypatch):
    import cai.engine

    from cai.backends.scripted import ScriptedBackend
    from cai.config import load_pipeline
    from cai.generate import generate

    pipeline = write_pipeline(tmp_path, n_prompts=3, feedback={"enabled": True})
    judge = FakeJudge(lambda a, b: (-0.1, -2.0))
    generate(load_pipeline(pipeline), str(pipeline), backend=ScriptedBackend("echo"), judge=judge)
    first = {r[-1]["fingerprint"] for r in records_by_id(tmp_path / "out").values()}
    monkeypatch.setattr(cai.engine, "PROMPT_VERSION", cai.engine.PROMPT_VERSION + 1)
    generate(load_pipeline(pipeline), str(pipeline), backend=ScriptedBackend("echo"), judge=judge)
    second = {r[-1]["fingerprint"] for r in records_by_id(tmp_path / "out").values()}
    # Every record was remade under the new prompt: none keeps a label from the old one.
    assert len(first) == len(second) == 1 and first != second


def test_a_model_without_a_chat_template_is_asked_as_raw_human_assistant_text(embedded):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded.path)
    tok.chat_template = None
    conv = [{"role": "user", "content": "Which is better?"}, {"role": "assistant", "content": PREFILL}]
    assert raw_text(conv) == "Human: Which is better?\n\nAssistant: " + PREFILL
    assert raw_text(conv[:1]) == "Human: Which is better?\n\nAssistant:"
    assert tok.decode(prompt_ids(tok, conv)) == raw_text(conv)
    assert raw_reply(" Paris is the capital.\nHuman: and Spain?\nAssistant: Madrid") == "Paris is the capital."


def test_with_a_template_a_prefilled_turn_is_continued_not_closed(embedded):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded.path)
    text = tok.decode(prompt_ids(tok, [{"role": "user", "content": "Q"}, {"role": "assistant", "content": PREFILL}]))
    assert text.endswith("<|im_start|>assistant\n" + PREFILL)


@pytest.mark.slow
def test_the_embedded_judge_answers_with_a_letter_when_prefilled(tmp_path):
    """On the real model: prefilled, nearly all the next-token mass is on (A)/(B); asked the old way
    (a fresh reply after "The answer is:") much less is, and the labels carry less."""
    from cai import shipped
    from cai.audit.probes import load_probes
    from cai.backends.hf import TransformersBackend

    constitution = load_constitution(shipped.path(shipped.HARMLESS))
    probes = [p for p in load_probes(None) if p.source == "judge_pairs"][:12]
    items = [Comparison(p.id, p.prompt, p.better, p.worse) for p in probes]
    backend = TransformersBackend("embedded")
    mass = {}
    for prefill in (True, False):
        judge = Judge(constitution, principles=1, prefill=prefill)
        verdicts = judge.compare(items, judge.calls(backend))
        mass[prefill] = sum(v.option_mass for v in verdicts) / len(verdicts)
    assert mass[True] > 0.8 > mass[False] + 0.2, mass
    print(json.dumps(mass))


def test_a_raw_text_model_is_scored_on_both_spellings_of_each_letter(tiny_model):
    """After "Assistant:" a reply's first token carries its space: raw-text scores add "A" and " A"."""
    import math

    from cai.backends import logaddexp
    from cai.backends.hf import TransformersBackend

    backend = TransformersBackend(tiny_model, batch_size=4)
    backend.tokenizer.chat_template = None
    convs = [[{"role": "user", "content": "Which? Options:\n(A) yes\n(B) no"}],
             [{"role": "user", "content": "Another? Options:\n(A) up\n(B) down"}]]
    got = backend.choice_logprobs(convs, ["A", "B"])
    bare, spaced = backend._scores(convs, ["A", "B"]), backend._scores(convs, [" A", " B"])
    for row, b, s in zip(got, bare, spaced):
        assert row == pytest.approx([logaddexp(b[0], s[0]), logaddexp(b[1], s[1])])
        assert all(math.exp(x) > math.exp(y) for x, y in zip(row, b))


@pytest.mark.slow
def test_gemma_asked_plainly_puts_real_mass_on_the_letters():
    """Gemma 3 270M (no chat template): asked for a fresh reply its letter is " A", not "A"; scored on
    both spellings the option mass is real, where the bare letters had about 1e-5."""
    from cai import shipped
    from cai.audit.probes import load_probes
    from cai.backends.hf import TransformersBackend

    constitution = load_constitution(shipped.path(shipped.HARMLESS))
    probes = [p for p in load_probes(None) if p.source == "judge_pairs"][:6]
    judge = Judge(constitution, principles=1, prefill=False)
    verdicts = judge.compare([Comparison(p.id, p.prompt, p.better, p.worse) for p in probes],
                             judge.calls(TransformersBackend("gemma-270m")))
    mass = sum(v.option_mass for v in verdicts) / len(verdicts)
    assert mass > 0.01, mass


def test_judge_examples_change_the_constitution_hash_and_their_absence_keeps_the_old_one(tmp_path):
    import hashlib

    plain = _constitution(tmp_path)
    # The hash as it was computed before judge_few_shot existed: the canonical dump without that key.
    doc = plain.model_dump(mode="json")
    del doc["judge_few_shot"]
    before = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
    assert plain.sha256 == before
    (tmp_path / "b").mkdir()
    assert _constitution(tmp_path / "b", FEW_SHOT).sha256 != before
