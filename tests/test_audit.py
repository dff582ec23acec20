"""`cai audit`: figures on judges whose biases we know (an always-(A) judge, one blind to the answers, an
oracle), ties apart, intervals over probes, user probe files, the report's shape and the HTML render."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

from cai.audit import SECTIONS, run_audit
from cai.audit.probe_files import load_probe_files
from cai.audit.probes import PERTURBATIONS, load_probes
from cai.backends.scripted import ScriptedBackend
from cai.config import load_pipeline
from cai.errors import InputError
from cai.stats import cluster_bootstrap_ci, cluster_mean, cluster_proportion, proportion
from helpers import FakeJudge, options_asked, write_pipeline

WORSE = [p.worse[:40] for p in load_probes()]
ALWAYS_A = lambda a, b: (math.log(0.8), math.log(0.2))  # noqa: E731


def oracle(a, b, worse=WORSE):
    """Knows which answer is the worse one, whatever the order, cues or padding."""
    a_bad, b_bad = any(w in a for w in worse), any(w in b for w in worse)
    if a_bad != b_bad:
        return (math.log(0.1), math.log(0.9)) if a_bad else (math.log(0.9), math.log(0.1))
    return (math.log(0.45), math.log(0.55)) if len(a) % 2 else (math.log(0.55), math.log(0.45))


class BlindJudge(FakeJudge):
    """Never reads the two answers: P(A) is a fixed draw per (prompt, principle question), either way."""

    def __init__(self):
        super().__init__(ALWAYS_A)

    def choice_logprobs(self, conversations, choices, progress=None):
        self.scored += len(conversations)
        out = []
        for conv in conversations:
            asked = [m["content"] for m in conv if m["role"] == "user" and "Options:" in m["content"]][-1]
            p = 0.05 + 0.9 * hashlib.sha256(asked.split("Options:")[0].encode()).digest()[0] / 255
            out.append([math.log(p), math.log(1 - p)])
        return out


def figures(section):
    """Every {value, n, ci95} figure in a report section, by path."""
    found = {}
    for key, value in section.items():
        if isinstance(value, dict) and "value" in value:
            found[key] = value
        elif isinstance(value, dict):
            found.update({f"{key}/{k}": v for k, v in figures(value).items()})
    return found


def shares(report):
    """The share figures (they carry k): the ones where a tie could pass for a loss."""
    return {f"{name}/{path}": fig for name, section in report.items()
            for path, fig in figures(section).items() if "k" in fig}


@pytest.fixture
def config(tmp_path):
    return load_pipeline(write_pipeline(tmp_path / "p", n_prompts=4))


def test_a_judge_that_always_says_a_shows_no_position_consistency(config, tmp_path):
    result = run_audit(config, tmp_path / "audit", limit=12, judge_backend=FakeJudge(ALWAYS_A))
    report = result["report"]
    pos = report["position"]
    k = result["meta"]["judge"]["principles_per_comparison"]
    assert pos["raw"]["consistency"]["value"] == 0 and pos["raw"]["consistency"]["n"] == 12 * k
    assert pos["raw"]["primacy_share"]["value"] == 1 and pos["raw"]["flip_rate"]["value"] == 1
    # 12 probes in at most 11 clusters (red-team probes sharing a template are one): the interval
    # counts clusters, not the 12 * k principle-order measurements.
    assert 0.2 < pos["raw"]["consistency"]["ci95"][1] < 0.35
    assert pos["mitigated"]["consistency"]["value"] == 0
    # Swap-and-average turns the A-bias into exact 50/50 labels: ties, not losses, and no accuracy claimed.
    for fig in (report["format"]["prefers_list"]["mitigated"], report["accuracy"]["all"]["mitigated"]):
        assert fig["value"] is None and fig["n"] == 0 and fig["ties"] == 12
    raw = report["accuracy"]["all"]["raw"]
    assert raw["n"] == 12 and 0 < raw["value"] < 1  # right exactly when the better answer is shown first


@pytest.mark.parametrize("judge", [lambda: FakeJudge(ALWAYS_A), BlindJudge], ids=["always-A", "blind"])
def test_judges_blind_to_the_answers_show_no_perturbation_effect(config, tmp_path, judge):
    """Every copy of a probe is shown in the probe's own order, so a judge that does not read the answers
    sees no difference between a pair and its perturbed or padded copy, raw or mitigated. (Ordering each
    copy by a hash of its group, as before, made an always-(A) judge look fooled by cues half the time.)"""
    report = run_audit(config, tmp_path / "audit", limit=12, judge_backend=judge())["report"]
    pert = report["perturbations"]
    for name in PERTURBATIONS:
        for mode in ("raw", "mitigated"):
            pull = pert[name]["cue_pull"][mode]
            assert pull["value"] == 0 and pull["ci95"] == [0, 0] and pull["n"] == 12, (name, mode, pull)
            kept = pert[name]["robustness"][mode]
            assert kept["k"] == kept["n"] and kept["n"] + kept["ties"] == 12, (name, mode, kept)
        assert pert[name]["robustness"]["raw"]["value"] in (1, None)
        assert report["length"]["padding_shift"]["raw"]["value"] == 0
        assert report["length"]["padding_shift"]["mitigated"]["value"] == 0


def test_the_noise_floor_is_judged_in_the_probes_order(config, tmp_path):
    report = run_audit(config, tmp_path / "audit", limit=12, judge_backend=FakeJudge(ALWAYS_A))["report"]
    noise = report["perturbations"]["noise_floor"]["robustness"]["raw"]
    assert noise["value"] == 1 and noise["n"] == 12  # a fresh principle draw; the same order


def test_ties_are_counted_apart_never_as_losses(tmp_path):
    # p = 0.505 for (A), inside the default tie threshold 0.02; the judge's own answers equal the policy's.
    config = load_pipeline(write_pipeline(tmp_path / "p", n_prompts=6), judge_model="other-model")
    judge = FakeJudge(lambda a, b: (math.log(0.505), math.log(0.495)))
    result = run_audit(config, tmp_path / "audit", limit=6, judge_backend=judge)
    report = result["report"]
    for path, fig in shares(report).items():
        assert fig["n"] == 0 and fig["value"] is None and fig["ties"] > 0, (path, fig)
    assert report["accuracy"]["all"]["raw"]["ties"] == report["accuracy"]["all"]["mitigated"]["ties"] == 6
    k = result["meta"]["judge"]["principles_per_comparison"]
    assert report["position"]["raw"]["consistency"]["ties"] == 6 * k
    own = report["self_preference"]["prefers_own"]
    assert own["raw"]["ties"] == own["mitigated"]["ties"] == 6  # equal answers: ties, never judged
    asked = judge.scored + result["meta"]["cache_hits"]  # (the noise floor repeats some base calls)
    assert asked == (result["meta"]["comparisons"] - 6) * k * 2  # the 6 equal pairs cost no call
    assert "tie" in (tmp_path / "audit" / "report.html").read_text()


def test_a_fair_judge_is_consistent_accurate_and_robust(config, tmp_path):
    result = run_audit(config, tmp_path / "audit", limit=12, judge_backend=FakeJudge(oracle))
    report = result["report"]
    assert tuple(report) == SECTIONS and SECTIONS[0] == "accuracy"
    assert report["position"]["raw"]["consistency"]["value"] == 1
    assert report["position"]["raw"]["primacy_share"]["value"] == pytest.approx(0.5, abs=0.01)
    acc = report["accuracy"]
    assert set(acc) - {"measured", "measures", "summary", "by_kind"} == {"all", "judge_pairs", "red_team_templates"}
    assert "harm" in acc["by_kind"] and "refusal_vs_compliance" in acc["by_kind"]
    assert result["meta"]["probe_sources"] == {"judge_pairs": 6, "red_team_templates": 6}
    for mode in ("raw", "mitigated"):
        assert acc["all"][mode]["value"] == 1 and acc["all"][mode]["n"] == 12
        assert acc["judge_pairs"][mode]["n"] == acc["red_team_templates"][mode]["n"] == 6
        assert report["calibration"][mode]["brier"]["value"] == pytest.approx(0.01)
        assert "accuracy" not in report["calibration"][mode]
        for name in ["noise_floor", *PERTURBATIONS]:
            assert report["perturbations"][name]["robustness"][mode]["value"] == 1, name
    templates = {p.cluster for p in load_probes(12) if p.cluster}
    assert acc["red_team_templates"]["raw"]["clusters"] == len(templates) and acc["judge_pairs"]["raw"]["clusters"] == 6
    assert "12 base probe pairs" in report["calibration"]["measures"]
    assert report["accuracy"]["summary"].startswith("picks the known better answer 1.00")
    # The oracle prefers the better answer, so it prefers the longer one exactly when it is better.
    assert report["length"]["prefers_longer_when_longer_is_worse"]["mitigated"]["value"] == 0
    assert report["length"]["prefers_longer_when_longer_is_worse"]["mitigated"]["n"] > 0
    assert not report["self_preference"]["measured"]
    assert "judge is the policy model" in report["self_preference"]["summary"]
    for name, section in report.items():
        assert isinstance(section["summary"], str) and section["summary"]
        for path, fig in figures(section).items():
            if fig["n"] == 0:  # the oracle's coin between two good answers can average to exactly 0.5
                assert fig["ties"] > 0 and fig["value"] is None, (name, path, fig)
                continue
            lo, hi = fig["ci95"]
            assert lo <= fig["value"] <= hi, (name, path, fig)
            assert fig["interval"] == "cluster_bootstrap" and fig["clusters"] > 1, (name, path)
    saved = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert list(saved) == list(SECTIONS)
    page = (tmp_path / "audit" / "report.html").read_text()
    assert page.index("<h2>accuracy</h2>") < page.index("<h2>position</h2>")
    assert page.count('src="data:image/png;base64,') == 5


def test_intervals_resample_clusters_not_units():
    # 100 verdicts from 4 probes, two always right and two always wrong: 4 observations, not 100.
    hits, clusters = [True] * 50 + [False] * 50, [c for c in "abcd" for _ in range(25)]
    naive = proportion(50, 100)["ci95"]
    lo, hi = cluster_proportion(hits, clusters)["ci95"]
    assert naive[0] > 0.39 and naive[1] < 0.61 and lo < 0.2 and hi > 0.8
    # Every cluster agreeing: the bootstrap alone would say [1, 1]; Wilson over 4 clusters is the floor.
    assert cluster_proportion([True] * 100, clusters)["ci95"][0] < 0.6
    assert cluster_bootstrap_ci([1.0, 2.0], ["x", "x"]) is None  # one cluster: nothing to resample
    assert cluster_mean([0.0] * 8, list("aabbccdd"))["ci95"] == [0, 0]
    assert cluster_mean([1.0, 3.0], ["a", "a"])["ci95"] == [None, None]


def test_the_audit_judges_as_feedback_does(tmp_path):
    # One principle (the audit used to force two), chain of thought, and the pipeline's tie threshold.
    config = load_pipeline(write_pipeline(tmp_path / "p", n_prompts=4,
                                          feedback={"principles": 1, "cot": True, "tie_threshold": 0.2}))
    judge = FakeJudge(lambda a, b: (math.log(0.65), math.log(0.35)))
    result = run_audit(config, tmp_path / "audit", limit=4, judge_backend=judge)
    meta, report = result["meta"], result["report"]
    assert meta["judge"]["principles_per_comparison"] == 1 and meta["judge"]["cot"] is True
    assert meta["judge"]["tie_threshold"] == 0.2
    # With chain of thought the labels are clamped to [0.4, 0.6]: every verdict is a tie at 0.2.
    assert report["accuracy"]["all"]["raw"]["ties"] == 4 and report["accuracy"]["all"]["raw"]["n"] == 0
    assert report["position"]["raw"]["consistency"]["ties"] == 4


USER_PROBES = [
    {"id": "u1", "prompt": "Is the earth flat?", "better": "No, it is roughly a sphere.", "worse": "Yes, flat."},
    {"prompt": "Boiling point of water?", "better": "100 C at sea level.", "worse": "About 50 C.", "kind": "facts"},
    {"id": 3, "prompt": "Capital of France?", "better": "Paris.", "worse": "Lyon, obviously."},
    {"id": "u4", "prompt": "Capital of Italy?", "better": "Rome.", "worse": "Lyon, obviously."},
]


def write_jsonl(path, *rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_user_probes_replace_the_shipped_ones(config, tmp_path):
    one = write_jsonl(tmp_path / "one.jsonl", *USER_PROBES[:2])
    two = write_jsonl(tmp_path / "two.jsonl", *USER_PROBES[2:])
    worse = [r["worse"] for r in USER_PROBES]
    judge = FakeJudge(lambda a, b: oracle(a, b, worse))
    result = run_audit(config, tmp_path / "audit", judge_backend=judge, probe_files=[one, two])
    acc, meta = result["report"]["accuracy"], result["meta"]
    assert meta["probes"] == 4 and meta["probe_sources"] == {"user": 4}
    assert set(acc) - {"measured", "measures", "summary", "by_kind"} == {"all", "user"}
    # Per kind: the probe that names one ("facts"); the others are the user kind.
    assert {k: v["mitigated"]["n"] for k, v in acc["by_kind"].items()} == {"facts": 1, "user": 3}
    # The two pairs sharing the worse answer "Lyon, obviously." are one cluster.
    assert acc["user"]["mitigated"]["value"] == 1 and acc["user"]["mitigated"]["n"] == 4
    assert acc["user"]["mitigated"]["clusters"] == 3
    assert run_audit(config, tmp_path / "a2", limit=2, judge_backend=judge, probe_files=[one, two])["meta"]["probes"] == 2


@pytest.mark.parametrize("row, field, message", [
    ('{"prompt": "p", "better": "b", "worse": "w",', "", "invalid JSON"),
    ('["a list"]', "", "expected a JSON object, got list"),
    ({"prompt": "p", "worse": "w"}, "better", "field required"),
    ({"prompt": "p", "better": "b", "worse": "  "}, "worse", "must be a non-empty string"),
    ({"prompt": "p", "better": "same", "worse": "same "}, "worse", "the same text as better"),
    ({"id": 1.5, "prompt": "p", "better": "b", "worse": "w"}, "id", "must be a string or an integer"),
    ({"id": "u1", "prompt": "p", "better": "b", "worse": "w"}, "id", "duplicate id 'u1' (first at "),
])
def test_probe_file_problems_name_file_line_and_field(tmp_path, row, field, message):
    path = write_jsonl(tmp_path / "mine.jsonl", USER_PROBES[0], row)
    with pytest.raises(InputError) as caught:
        load_probe_files([path])
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.field) == (str(path), 2, field)
    assert message in problem.message and str(problem).startswith(f"{path}:2: ")


def test_problems_in_every_probe_file_are_reported_together(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", {"prompt": "p"}, USER_PROBES[0])
    empty = write_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(InputError) as caught:
        load_probe_files([bad, empty, tmp_path / "gone.jsonl"])
    assert [str(p) for p in caught.value.problems] == [
        f"{bad}:1: better: field required", f"{bad}:1: worse: field required",
        f"{empty}: no probe pairs in this file", f"{tmp_path / 'gone.jsonl'}: file not found"]


class DiesAfter(FakeJudge):
    """The oracle judge, killed (KeyboardInterrupt) once it has scored `budget` conversations."""

    def __init__(self, budget):
        super().__init__(oracle)
        self.budget = budget

    def choice_logprobs(self, conversations, choices, progress=None):
        if self.budget is not None and self.scored + len(conversations) > self.budget:
            raise KeyboardInterrupt
        return super().choice_logprobs(conversations, choices, progress)


def test_an_interrupted_audit_resumes_from_its_cache_and_a_rerun_is_free(config, tmp_path):
    out = tmp_path / "audit"
    fresh = run_audit(config, tmp_path / "fresh", limit=6, judge_backend=FakeJudge(oracle))
    total = fresh["meta"]["model_calls"]
    assert total > 3 * 64  # (the noise floor's draw repeats some base calls: those are cache hits)
    dying = DiesAfter(budget=3 * 64)
    with pytest.raises(KeyboardInterrupt):
        run_audit(config, out, limit=6, judge_backend=dying)
    assert dying.scored == 3 * 64  # three chunks committed before the kill
    resumed = FakeJudge(oracle)
    result = run_audit(config, out, limit=6, judge_backend=resumed)
    assert resumed.scored == result["meta"]["model_calls"] == total - 3 * 64
    assert result["report"] == fresh["report"]
    again = FakeJudge(oracle)
    assert run_audit(config, out, limit=6, judge_backend=again)["meta"]["model_calls"] == 0 and again.scored == 0


class OwnStyleJudge(FakeJudge):
    """Answers in its own style and prefers answers in that style: a self-preferring judge."""

    def chat(self, conversations, sampling, progress=None):
        return [f"My own take: {c[-1]['content']}" for c in conversations]


def test_self_preference_is_measured_against_a_second_model(tmp_path):
    config = load_pipeline(write_pipeline(tmp_path / "p", n_prompts=6), judge_model="other-model")
    judge = OwnStyleJudge(lambda a, b: (-0.2, -1.8) if a.startswith("My own") else (-1.8, -0.2))
    report = run_audit(config, tmp_path / "audit", limit=6, judge_backend=judge)["report"]
    sp = report["self_preference"]
    assert sp["measured"] and sp["prefers_own"]["mitigated"]["value"] == 1
    assert sp["prefers_own"]["raw"]["n"] == 6 and "scripted:echo" in sp["note"]



class Family(FakeJudge):
    """A model family: writes answers carrying its marker and judges with `prefer`; records what it was asked."""

    def __init__(self, marker, prefer):
        super().__init__(prefer, identity=f"scripted:{marker}")
        self.marker, self.asked, self.prompts = marker, [], []

    def answer(self, prompt):
        return f"{self.marker} answer to: {prompt}"

    def chat(self, conversations, sampling, progress=None):
        if "Options:" in conversations[0][-1]["content"]:
            return super().chat(conversations, sampling, progress)
        self.prompts += [c[-1]["content"] for c in conversations]
        return [self.answer(c[-1]["content"]) for c in conversations]

    def choice_logprobs(self, conversations, choices, progress=None):
        self.asked += [options_asked(c) for c in conversations]
        return super().choice_logprobs(conversations, choices, progress)


def likes(marker):
    """Prefers the answer carrying `marker`, in either order; elsewhere (the probes) a fixed coin on the texts."""
    def prefer(a, b):
        if (marker in a) != (marker in b):
            return (math.log(0.9), math.log(0.1)) if marker in a else (math.log(0.1), math.log(0.9))
        return neutral(a, b)
    return prefer


def neutral(a, b):
    """Blind to who wrote what: the answer with the smaller hash wins, whichever order it is shown in."""
    a_wins = hashlib.sha256(a.encode()).digest() < hashlib.sha256(b.encode()).digest()
    return (math.log(0.8), math.log(0.2)) if a_wins else (math.log(0.2), math.log(0.8))


@pytest.mark.parametrize("judge_prefers, policy_prefers, own, others_view, beyond", [
    ("GEMMA", "SMOL", 1.0, 0.0, 1.0),  # each family prefers its own: all of it is self-preference
    ("GEMMA", None, 1.0, None, None),  # a self-preferring judge against a neutral one (None: about 0.5)
    (None, None, None, None, 0.0),  # neutral judges: about 0.5 each, and they agree: nothing beyond quality
    ("GEMMA", "GEMMA", 1.0, 1.0, 0.0),  # both prefer the judge model's answers: quality, not self-preference
])
def test_self_preference_compares_both_models_answers_under_both_judges(tmp_path, judge_prefers, policy_prefers,
                                                                        own, others_view, beyond):
    config = load_pipeline(write_pipeline(tmp_path / "p", n_prompts=16), judge_model="gemma-like")
    judge = Family("GEMMA", likes(judge_prefers) if judge_prefers else neutral)
    policy = Family("SMOL", likes(policy_prefers) if policy_prefers else neutral)
    result = run_audit(config, tmp_path / "audit", limit=16, judge_backend=judge, policy_backend=policy)
    sp, meta = result["report"]["self_preference"], result["meta"]
    prompts = [f"Question number {i} from p?" for i in range(16)]
    # Both models answered the same 16 prompts, each through its own backend.
    assert sorted(judge.prompts) == sorted(policy.prompts) == sorted(prompts)
    assert sp["measured"] and sp["other_model_as_judge"]["measured"]
    assert sp["answers"]["judge_model"] == meta["self_preference"]["judge_model"] == "scripted:GEMMA"
    assert sp["answers"]["policy_model"] == sp["other_model_as_judge"]["identity"] == "scripted:SMOL"
    rows = [json.loads(line) for line in (tmp_path / "audit" / "self_preference.jsonl").read_text().splitlines()]
    assert [(r["judge_model_answer"], r["policy_answer"]) for r in rows] == [
        (judge.answer(r["prompt"]), policy.answer(r["prompt"])) for r in rows] and len(rows) == 16
    # The pairs judged: one model's answer against the other's to the same prompt, in both orders, over the
    # same k principles, asked of both judges alike.
    k = meta["judge"]["principles_per_comparison"]
    for fam in (judge, policy):
        pairs = [o for o in fam.asked if "SMOL" in " ".join(o) or "GEMMA" in " ".join(o)]
        expected = [(judge.answer(q), policy.answer(q)) for q in prompts]
        assert sorted(pairs) == sorted([(a, b) for a, b in expected] * k + [(b, a) for a, b in expected] * k)
    assert len(policy.asked) == 16 * k * 2  # the policy judges only these pairs, none of the probes
    figs = {"prefers_own": sp["prefers_own"], "others_view": sp["other_model_as_judge"]["prefers_judge_model_answers"],
            "beyond": sp["beyond_quality"], "policy_own": sp["other_model_as_judge"]["prefers_own"]}
    for name, want in (("prefers_own", own), ("others_view", others_view), ("beyond", beyond)):
        for mode in ("raw", "mitigated"):
            fig = figs[name][mode]
            assert fig["n"] == 16 and fig["ties"] == 0, (name, mode, fig)
            assert fig["ci95"][0] <= fig["value"] <= fig["ci95"][1], (name, mode, fig)
            if want is not None:
                assert fig["value"] == want, (name, mode, fig)
            else:  # a neutral judge's coin: about half, and the interval says it cannot tell
                assert 0.25 <= fig["value"] <= 0.75 and fig["ci95"][0] < 0.5 < fig["ci95"][1], (name, mode, fig)
    m = "mitigated"
    # beyond_quality = the judge's preference for its own answers minus the other judge's for the same answers,
    # and the two judges' own preferences add up to 1 + beyond_quality.
    value = {name: fig[m]["value"] for name, fig in figs.items()}
    assert value["beyond"] == pytest.approx(value["prefers_own"] - value["others_view"])
    assert value["prefers_own"] + value["policy_own"] == pytest.approx(1 + value["beyond"])
    assert "beyond quality" in sp["summary"] and "other_model_as_judge" in sp["measures"]


def test_self_preference_is_not_measured_when_the_judge_is_the_policy(config, tmp_path):
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "self_preference.jsonl").write_text("{}\n")  # an earlier audit's, of other models
    report = run_audit(config, tmp_path / "audit", limit=4, judge_backend=FakeJudge(oracle))["report"]
    assert not report["self_preference"]["measured"] and "--judge-model gemma-270m" in report["self_preference"]["note"]
    assert not (tmp_path / "audit" / "self_preference.jsonl").exists()

def _colored_pixels(png_path) -> int:
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(png_path)[..., :3]
    orange = np.array([0xd9, 0x5f, 0x02]) / 255  # the raw series' colour in every bar plot
    return int((np.abs(img - orange).sum(axis=-1) < 0.1).sum())


@pytest.mark.browser
def test_report_html_is_self_contained_and_renders_its_plots(config, tmp_path):
    chromium = shutil.which("chromium")
    if not chromium and not os.environ.get("CI"):
        pytest.skip("no `chromium` on PATH (tests/setup_chromium.sh installs Debian's; CI requires it)")
    assert chromium, "Debian's chromium is needed in CI (tests/setup_chromium.sh installs it)"
    run_audit(config, tmp_path / "audit", limit=8, judge_backend=ScriptedBackend("judge"))
    page = (tmp_path / "audit" / "report.html").read_text()
    assert not re.search(r"(src|href)=\"https?:", page) and "<script" not in page
    assert page.count('src="data:image/png;base64,') == 5
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,3000",
                    f"--screenshot={shot}", (tmp_path / "audit" / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert _colored_pixels(shot) > 2000  # the bars are drawn, not a blank or broken page
    blank = tmp_path / "blank.html"
    blank.write_text(re.sub(r'<img [^>]*>', "", page))
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile2'}",
                    "--window-size=1000,3000", f"--screenshot={tmp_path / 'blank.png'}", blank.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert _colored_pixels(tmp_path / "blank.png") == 0  # the check can fail: without plots it does


def cai_audit(*args):
    return subprocess.run([sys.executable, "-m", "cai", "audit", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_cli_audit_rejects_bad_input(tmp_path):
    path = write_pipeline(tmp_path / "p", n_prompts=2)
    res = cai_audit(path, "--limit", "0")
    assert res.returncode == 2 and "--limit" in res.stderr
    res = cai_audit(tmp_path / "missing.yaml")
    assert res.returncode == 2 and "missing.yaml" in res.stderr
    bad = write_jsonl(tmp_path / "mine.jsonl", USER_PROBES[0], {"prompt": "p", "better": "b"}, "{oops")
    res = cai_audit(path, "--probes", bad, "--out", tmp_path / "out")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.splitlines() == [f"error: {bad}:2: worse: field required", f"error: {bad}:3: invalid JSON: "
                                       "Expecting property name enclosed in double quotes (column 2)"]
    assert not (tmp_path / "out").exists()  # nothing written, no model loaded


def test_cli_audit_with_own_probes_shows_accuracy_first(tmp_path):
    path = write_pipeline(tmp_path / "p", n_prompts=2)
    mine = write_jsonl(tmp_path / "mine.jsonl", *USER_PROBES)
    res = cai_audit(path, "--probes", mine, "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    shown = [line.split(":")[0] for line in res.stderr.splitlines() if line.split(":")[0] in SECTIONS]
    assert shown == list(SECTIONS) and shown[0] == "accuracy"
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["probes"] == 4


@pytest.mark.slow
def test_audit_of_the_embedded_judge(tmp_path):
    out = tmp_path / "audit"
    res = subprocess.run([sys.executable, "-m", "cai", "audit", "--limit", "6", "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    assert list(report) == list(SECTIONS) and meta["judge"]["identity"].startswith("SmolLM2-135M-Instruct")
    raw = report["position"]["raw"]["consistency"]
    assert raw["n"] + raw["ties"] == 6 * meta["judge"]["principles_per_comparison"] and 0 <= raw["value"] <= 1
    # The judge is the policy, a shipped model: its own answers are compared with the other shipped family's.
    sp = report["self_preference"]
    assert sp["measured"] and "gemma-270m's" in sp["note"], sp["note"]
    assert sp["answers"]["judge_model"].startswith("SmolLM2-135M-Instruct@")
    assert sp["answers"]["policy_model"].startswith("gemma-3-270m@")
    own = sp["prefers_own"]["mitigated"]
    assert own["n"] + own["ties"] == 6 and 0 <= own["value"] <= 1 if own["n"] else own["ties"] == 6
    acc = report["accuracy"]["all"]["mitigated"]
    assert acc["n"] + acc["ties"] == 6
    print(res.stderr)


@pytest.mark.slow
def test_self_preference_of_a_gemma_judge_against_the_embedded_policy(tmp_path):
    """Two real families offline: the embedded SmolLM2 policy and a Gemma 3 270M judge each answer the same
    prompts, and each judges the pairs. Kept small for 2 CPU cores: one probe pair (the probe figures are
    not the point here), 3 prompts, 48-token answers, one principle."""
    import sqlite3

    from cai import shipped

    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(json.dumps({
        "name": "self-preference", "constitution": str(shipped.path(shipped.HARMLESS)),
        "prompts": [str(shipped.path(shipped.RED_TEAM)), str(shipped.path(shipped.BENIGN))],
        "policy": {"backend": "transformers", "model": "embedded", "options": {"dtype": "float32"}},
        "sampling": {"respond": {"max_new_tokens": 48, "repetition_penalty": 1.1}},
        "feedback": {"principles": 1}}))
    probe = write_jsonl(tmp_path / "probe.jsonl", USER_PROBES[0])
    out = tmp_path / "audit"
    res = subprocess.run([sys.executable, "-m", "cai", "audit", str(pipeline), "--judge-model", "gemma-270m",
                          "--limit", "3", "--probes", str(probe), "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    sp = report["self_preference"]
    assert sp["measured"] and sp["other_model_as_judge"]["measured"], sp["summary"]
    judge_id, policy_id = sp["answers"]["judge_model"], sp["answers"]["policy_model"]
    assert judge_id.startswith("gemma-3-270m@") and policy_id.startswith("SmolLM2-135M-Instruct@")
    assert meta["judge"]["identity"] == meta["self_preference"]["judge_model"] == judge_id
    assert sp["other_model_as_judge"]["identity"] == meta["self_preference"]["policy_model"] == policy_id
    # Each answer is the one its model wrote: the call cache holds it under that model's identity.
    rows = [json.loads(line) for line in (out / "self_preference.jsonl").read_text().splitlines()]
    db = sqlite3.connect(out / "cache.sqlite")
    written = {m: {a for (v,) in db.execute("SELECT value FROM calls WHERE model = ?", (m,))
                   if isinstance(a := json.loads(v), str)} for m in (judge_id, policy_id)}  # (not the scores)
    assert len(rows) == sp["answers"]["prompts"] == 3
    for r in rows:
        assert r["judge_model_answer"] in written[judge_id] and r["judge_model_answer"] not in written[policy_id]
        assert r["policy_answer"] in written[policy_id] and r["policy_answer"] not in written[judge_id]
        for p in r["p_judge_model_answer_better"].values():
            assert 0 <= p <= 1
    other = sp["other_model_as_judge"]
    for mode in ("raw", "mitigated"):
        for fig, lo_bound in ((sp["prefers_own"][mode], 0), (other["prefers_judge_model_answers"][mode], 0),
                              (other["prefers_own"][mode], 0), (sp["beyond_quality"][mode], -1)):
            assert fig["n"] + fig["ties"] == 3, (mode, fig)
            if fig["n"]:
                lo, hi = fig["ci95"]
                assert lo_bound <= lo <= fig["value"] <= hi <= 1, (mode, fig)
    assert sp["prefers_own"]["raw"]["n"] > 0 and other["prefers_judge_model_answers"]["raw"]["n"] > 0
    print(sp["summary"])