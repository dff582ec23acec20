"""The dataset card: front matter the Hub understands (parsed with huggingface_hub's DatasetCard),
the constitution hash and text, models, counts, principle usage, and the audit when there is one."""

from __future__ import annotations

import json

import yaml
from huggingface_hub import DatasetCard

from cai import hub
from cai.card import AUDIT_KEYS
from helpers import make_run


def test_front_matter_and_body_without_feedback_or_audit(tmp_path):
    out = make_run(tmp_path / "r", n_prompts=20)
    hub.dry_run(out, tmp_path / "up", "org/name")
    card = DatasetCard.load(tmp_path / "up" / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert data["task_categories"] == ["text-generation"]
    assert "constitutional-ai" in data["tags"] and "synthetic" in data["tags"]
    assert data["size_categories"] == ["n<1K"]
    assert data["pretty_name"].startswith("Constitutional AI preferences: test")
    default = next(c for c in data["configs"] if c["config_name"] == "default")
    assert {f["split"] for f in default["data_files"]} == {"train", "test"}
    assert all(f["path"].startswith(f"data/{f['split']}-") for f in default["data_files"])
    run = json.loads((out / "run.json").read_text())
    sha = run["constitution_sha256"]
    text = card.text
    assert sha in text
    # The full constitution text, in a collapsible block, parses back to the same principles.
    block = text.split("<details>")[1].split("</details>")[0]
    body = block.split("```yaml\n")[1].split("\n```")[0]
    assert yaml.safe_load(body) == yaml.safe_load((tmp_path / "r" / "constitution.yaml").read_text())
    assert "scripted:echo" in text  # the policy's identity
    assert "No AI feedback for this run" in text and "No judge audit for this run" in text
    for split, n in run["counts"]["splits"].items():
        assert f"| {split} | {n} |" in text
    assert "images/principle_usage.png" in text
    assert "DPOTrainer" in text and 'load_dataset("org/name")' in text
    snippet = text.split("## Usage with TRL")[1].split("```python\n")[1].split("```")[0]
    assert len(snippet.strip().splitlines()) == 10
    assert "## Limitations" in text and "Synthetic" in text


def test_card_uses_judge_ties_and_audit_when_present(tmp_path):
    out = make_run(tmp_path / "r", n_prompts=12)
    run = json.loads((out / "run.json").read_text())
    run["judge"] = {"backend": "transformers", "spec": "embedded", "identity": "hf:SmolLM2@abc123", "same_as_policy": True}
    run["counts"].update(ties=3, judge_malformed=1, comparisons=24)
    run["cost"] = {"usd": 1.25, "saved_usd": 0.5, "models": {}}
    (out / "run.json").write_text(json.dumps(run))
    report = {k: {"measured": True, "summary": f"{k} figure 0.61 [0.52, 0.70], n=40"} for k in AUDIT_KEYS}
    report["calibration"] = {"measured": False, "summary": "no pairs with a known better answer"}
    (out / "audit").mkdir()
    (out / "audit" / "report.json").write_text(json.dumps(report))
    hub.dry_run(out, tmp_path / "up", "org/name")
    text = DatasetCard.load(tmp_path / "up" / "README.md").text
    assert "hf:SmolLM2@abc123" in text and "same model as the policy" in text
    assert "judge ties (no preference): 3" in text and "malformed judge answers: 1" in text
    t = run["tokens"]["total"]  # counted by the run itself; the cost is this test's
    assert (f"tokens: {t['input']} input and {t['output']} output spent, 0 input and 0 output saved by the cache "
            "($1.2500; $0.5000 saved)") in text
    for k in AUDIT_KEYS[:-1]:
        assert f"**{k}**: {k} figure 0.61" in text
    assert "**calibration**: not measured (no pairs with a known better answer)" in text
    assert "No AI feedback" not in text and "No judge audit" not in text


def test_card_keeps_braces_and_fences_in_the_constitution_verbatim(tmp_path):
    from cai.card import build_card

    weird = "name: x\nprinciples:\n  - id: a\n    critique: 'Use {{ braces }} and ``` fences'\n"
    card = build_card({"constitution": {"name": "x", "sha256": "f" * 64}, "counts": {"pairs": 5, "splits": {"train": 5}}},
                      weird, {"a": 2}, ["a"], "org/x", None, "other",
                      {"data": {"train": "data/train-00000-of-00001-abc.parquet"}})
    assert "{{ braces }} and ``` fences" in str(card)
    assert card.data.to_dict()["license"] == "other"
