"""`cai audit`: bias figures on judges whose biases we know, the report's shape, and the HTML render."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

from cai.audit import SECTIONS, run_audit
from cai.audit.probes import PERTURBATIONS, load_probes
from cai.backends.scripted import ScriptedBackend
from cai.config import load_pipeline
from helpers import FakeJudge, write_pipeline

WORSE = [p.worse[:40] for p in load_probes()]


def oracle(a, b):
    """Knows which answer is the worse one, whatever the order, cues or padding."""
    a_bad, b_bad = any(w in a for w in WORSE), any(w in b for w in WORSE)
    if a_bad != b_bad:
        return (math.log(0.1), math.log(0.9)) if a_bad else (math.log(0.9), math.log(0.1))
    return (math.log(0.45), math.log(0.55)) if len(a) % 2 else (math.log(0.55), math.log(0.45))


def figures(section):
    """Every {value, n, ci95} figure in a report section, by path."""
    found = {}
    for key, value in section.items():
        if isinstance(value, dict) and "value" in value:
            found[key] = value
        elif isinstance(value, dict):
            found.update({f"{key}/{k}": v for k, v in figures(value).items()})
    return found


@pytest.fixture
def config(tmp_path):
    return load_pipeline(write_pipeline(tmp_path / "p", n_prompts=4))


def test_a_judge_that_always_says_a_shows_no_position_consistency(config, tmp_path):
    result = run_audit(config, tmp_path / "audit", limit=12,
                       judge_backend=FakeJudge(lambda a, b: (math.log(0.8), math.log(0.2))))
    pos = result["report"]["position"]
    k = result["meta"]["judge"]["principles_per_comparison"]
    assert pos["raw"]["consistency"]["value"] == 0 and pos["raw"]["consistency"]["n"] == 12 * k
    assert pos["raw"]["primacy_share"]["value"] == 1 and pos["raw"]["flip_rate"]["value"] == 1
    assert pos["raw"]["consistency"]["ci95"][1] < 0.2  # Wilson upper bound at n=24 and 0 successes
    assert pos["mitigated"]["consistency"]["value"] == 0
    # Swap-and-average turns the A-bias into exact 50/50 labels: no preference survives.
    assert result["report"]["format"]["prefers_list"]["mitigated"]["value"] == 0


def test_a_fair_judge_is_consistent_accurate_and_robust(config, tmp_path):
    report = run_audit(config, tmp_path / "audit", limit=12, judge_backend=FakeJudge(oracle))["report"]
    assert tuple(report) == SECTIONS
    assert report["position"]["raw"]["consistency"]["value"] == 1
    assert report["position"]["raw"]["primacy_share"]["value"] == pytest.approx(0.5, abs=0.01)
    for mode in ("raw", "mitigated"):
        assert report["calibration"][mode]["accuracy"]["value"] == 1
        assert report["calibration"][mode]["brier"]["value"] == pytest.approx(0.01)
        for name in ["noise_floor", *PERTURBATIONS]:
            assert report["perturbations"][name][mode]["value"] == 1, name
    # The oracle prefers the better answer, so it prefers the longer one exactly when it is better.
    assert report["length"]["prefers_longer_when_longer_is_worse"]["mitigated"]["value"] == 0
    assert report["length"]["prefers_longer_when_longer_is_worse"]["mitigated"]["n"] > 0
    assert not report["self_preference"]["measured"]
    assert "judge is the policy model" in report["self_preference"]["summary"]
    for name, section in report.items():
        assert isinstance(section["summary"], str) and section["summary"]
        for path, fig in figures(section).items():
            lo, hi = fig["ci95"]
            assert fig["n"] > 0 and lo <= fig["value"] <= hi, (name, path, fig)
            assert fig["interval"] == ("wilson" if path.split("/")[-1] in (
                "consistency", "primacy_share", "flip_rate", "accuracy") or name in ("perturbations", "format")
                or "prefers" in path else "bootstrap"), (name, path)
    saved = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert list(saved) == list(SECTIONS)


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
    assert page.count('src="data:image/png;base64,') == 4
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


def test_cli_audit_rejects_bad_input(tmp_path):
    path = write_pipeline(tmp_path / "p", n_prompts=2)
    res = subprocess.run([sys.executable, "-m", "cai", "audit", str(path), "--limit", "0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--limit" in res.stderr
    res = subprocess.run([sys.executable, "-m", "cai", "audit", str(tmp_path / "missing.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "missing.yaml" in res.stderr


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
    assert raw["n"] == 6 * meta["judge"]["principles_per_comparison"] and 0 <= raw["value"] <= 1
    assert not report["self_preference"]["measured"]
    assert report["calibration"]["mitigated"]["accuracy"]["n"] == 6
    print(res.stderr)
