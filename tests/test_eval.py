"""`cai eval` and cai.stats: intervals, the refusal phrase check, and a real run on the embedded model."""

from __future__ import annotations

import json

import pytest

from cai.stats import bootstrap_ci, wilson


def test_wilson_interval_known_values():
    lo, hi = wilson(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and 0.15 < hi < 0.17


def test_bootstrap_interval_covers_the_mean_and_is_deterministic():
    values = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    lo, hi = bootstrap_ci(values, seed=0)
    assert lo < 5.5 < hi and hi - lo < 5
    assert bootstrap_ci(values, seed=0) == (lo, hi)
    assert bootstrap_ci([3.0]) == (3.0, 3.0)


def test_refusal_phrases():
    from cai.eval.run import refuses

    assert refuses("I'm sorry, but I can't help with that.")
    assert refuses("I cannot provide instructions for this.")
    assert not refuses("Sure! Preheat the oven to 200 C and roast the vegetables.")


def test_default_prompts_are_the_shipped_test_split():
    from cai.dataset import split_of
    from cai.eval.run import EvalConfig, load_eval_prompts

    by_kind = load_eval_prompts(EvalConfig(model="x", out="y"))
    assert by_kind["red_team"] and by_kind["benign"]
    assert all(e["id"].startswith("rt-") for e in by_kind["red_team"])
    assert all(e["id"].startswith("bn-") for e in by_kind["benign"])
    assert all(split_of(e["id"], 0.1) == "test" for v in by_kind.values() for e in v)
    assert len(load_eval_prompts(EvalConfig(model="x", out="y", limit=2))["red_team"]) == 2


@pytest.mark.slow
def test_eval_on_the_embedded_model(embedded, tmp_path):
    """The embedded model against itself: identical greedy answers, so the judge's swap-averaged
    preference is exactly 0.5 and every rate is the same for both."""
    from typer.testing import CliRunner

    from cai.cli import app

    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--model", embedded.path, "--baseline", "embedded", "--out", str(out),
                                      "--limit", "2", "--max-new-tokens", "24"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "eval.json").read_text())
    m = data["metrics"]
    assert data["counts"] == {"red_team": 2, "benign": 2}
    assert m["harmlessness_preference"]["p_trained_better"]["value"] == pytest.approx(0.5, abs=1e-9)
    for metric in ("harmful_compliance", "benign_refusal"):
        for how in ("judge", "phrase"):
            t, b = m["trained"][metric][how], m["baseline"][metric][how]
            assert t["n"] == 2 and t["value"] == b["value"] and len(t["ci95"]) == 2
    ex = data["examples"][0]
    assert ex["trained_answer"] == ex["baseline_answer"] and ex["trained_answer"]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Answers side by side" in html
    assert "harmful compliance" in result.output


def test_a_bad_model_fails_before_any_generation(tmp_path, monkeypatch):
    from cai import backends
    from cai.errors import InputError
    from cai.eval.run import EvalConfig, run_eval

    loaded = []
    monkeypatch.setattr(backends, "create", lambda *a, **k: loaded.append(k) or pytest.fail("loaded a model"))
    good = tmp_path / "trained"
    good.mkdir()
    (good / "config.json").write_text("{}")
    (good / "tokenizer.json").write_text("{}")  # a complete checkpoint folder, as far as the check looks
    (good / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError) as info:
        run_eval(EvalConfig(model=str(good), baseline=str(tmp_path / "missing"), judge_model="./nope",
                            out=str(tmp_path / "e"), limit=1))
    flags = [p.file for p in info.value.problems]
    assert flags == ["--baseline", "--judge-model"] and not loaded
    assert not (tmp_path / "e").exists()


def test_failed_calls_stop_the_eval_with_one_line_not_a_type_error():
    from cai.backends import CallFailed
    from cai.eval.run import _answered, _yes_probability

    with pytest.raises(RuntimeError, match=r"1 of 2 trained model calls failed \(first: conversation is 9000 tokens"):
        _answered(["ok", CallFailed("conversation is 9000 tokens; the model takes at most 4096")], "trained model")

    class Judge:
        def choice_logprobs(self, convs, choices):
            return [[-0.1, -2.0], CallFailed("timeout")]

    with pytest.raises(RuntimeError, match="1 of 2 judge calls failed"):
        _yes_probability(Judge(), "{prompt} {answer}?", [("p", "a"), ("q", "b")])
