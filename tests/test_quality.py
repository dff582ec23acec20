"""Quality gates on crafted outputs: what keeps a record out of the pairs, and why."""

from cai.critique import SLCAI
from cai.constitution import Constitution
from cai import quality
from helpers import PRINCIPLES


def test_strip_meta_removes_announcements_and_keeps_the_answer():
    cases = {
        "Here is a revised response: Paris is the capital of France.": "Paris is the capital of France.",
        "Sure! Here's the rewritten version:\nUse a password manager.": "Use a password manager.",
        "Revision: Call a locksmith.": "Call a locksmith.",
        "Revised response - \"Ask your neighbour first.\"": "Ask your neighbour first.",
        "Revision 2: Certainly not.": "Certainly not.",
    }
    for raw, expected in cases.items():
        text, stripped = quality.strip_meta(raw)
        assert (text, stripped) == (expected, True), raw
    plain = "Here are three tips for sleeping better: keep a schedule."
    assert quality.strip_meta(plain) == (plain, False)


def _record(initial, rounds):
    return {"initial": initial, "rounds": rounds, "final": rounds[-1]["revision"] if rounds else initial}


def _round(critique, raw, answer):
    revision, _ = quality.strip_meta(raw)
    return {"critique": critique, "revision": revision,
            "critique_problem": quality.critique_problem(critique, answer),
            "revision_problem": quality.revision_problem(raw, revision, critique)}


def test_flags_each_reason():
    answer = "You could pick the lock with a tension wrench and a pick, then open the door quietly."
    good_critique = "The answer helps someone break into a home they do not own, which is illegal."
    good_revision = "I can't help you get into a home that isn't yours; a locksmith or the owner can."
    cases = {
        (): _record(answer, [_round(good_critique, good_revision, answer)]),
        ("empty_answer",): _record("  ", [_round(good_critique, good_revision, "")]),
        ("empty_critique",): _record(answer, [_round("Bad.", good_revision, answer)]),
        ("not_a_critique",): _record(answer, [_round(answer + " Also wear gloves.", good_revision, answer)]),
        ("empty_revision",): _record(answer, [_round(good_critique, "", answer)]),
        ("meta_only_revision",): _record(answer, [_round(good_critique, "Here is a revised response:", answer)]),
        ("revision_is_critique",): _record(answer, [_round(good_critique, good_critique, answer)]),
        ("revision_unchanged",): _record(answer, [_round(good_critique, "Revision: " + answer, answer)]),
    }
    for expected, rec in cases.items():
        assert tuple(quality.record_flags(rec)) == expected, expected


def test_near_duplicate_is_word_level_and_thresholded():
    a = "one two three four five six seven eight nine ten"
    assert quality.near_duplicate(a, a.upper())
    assert quality.near_duplicate(a, a.replace("ten", "eleven"))  # 9/10 words shared
    assert not quality.near_duplicate(a, "one two three four five")
    assert not quality.near_duplicate(a, "completely different words in another sentence here")


def test_flagged_records_stay_out_of_pairs_but_in_records(tmp_path):
    from cai import dataset

    base = {"id": "x", "prompt": "q", "constitution_sha256": "h", "model": "m", "category": None}
    good = {**base, "id": "good", "initial": "a", "final": "b", "flags": [],
            "rounds": [{"principle_id": "harm"}]}
    bad = {**base, "id": "bad", "initial": "a", "final": "a", "flags": ["revision_unchanged"],
           "rounds": [{"principle_id": "harm"}]}
    counts = dataset.build([good, bad], tmp_path, test_size=0.0)
    assert counts["records"] == 2 and counts["pairs"] == 1
    assert counts["flagged"] == {"revision_unchanged": 1}


def test_sl_cai_marks_echoing_model_outputs():
    """A model that repeats its input as critique and revision gets every record flagged."""
    constitution = Constitution.model_validate({"name": "t", "principles": PRINCIPLES})
    program = SLCAI(constitution, rounds=1)
    records = [{"id": f"e{i}", "prompt": f"Tell me thing {i} please, in detail", "rounds": []} for i in range(3)]

    class Parrot:
        """Calls whose every step answers with the previous assistant turn (or a fixed first answer)."""

        def chat(self, stage, conversations, ids):
            out = []
            for conv in conversations:
                prior = [m["content"] for m in conv if m["role"] == "assistant"]
                out.append(prior[-1] if prior else "A long enough answer about the thing you asked for")
            return out

    program.run(records, Parrot())
    for rec in records:
        assert "not_a_critique" in rec["flags"] and "revision_unchanged" in rec["flags"]
