"""The dataset card (README.md) for a run: Hub front matter plus a body a reader can trust.

Everything in it comes from the run directory: run.json (config, constitution
hash, model identities, counts, versions), the kept version folder (the
constitution text the data was made with, principle usage), and, when they
exist, the AI-feedback fields of run.json and RUN/audit/report.json. The card
says plainly when there is no AI feedback or no audit for the run.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

AUDIT_KEYS = ("accuracy", "position", "length", "format", "self_preference", "perturbations", "calibration")
HISTOGRAM = "images/principle_usage.png"


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def principle_histogram(usage: dict[str, int], principles: list[str], path: Path) -> None:
    """Horizontal bar chart: how often each principle was drawn for a critique round (zeros included)."""
    from matplotlib.ticker import MaxNLocator

    from cai.plots import pyplot, save

    plt = pyplot()

    names = list(principles) + [p for p in usage if p not in principles]
    counts = [usage.get(p, 0) for p in names]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.2), dpi=100)
    ax.barh(range(len(names)), counts, color="#4C72B0")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("critique rounds that drew the principle")
    ax.set_title("Principle usage")
    fig.tight_layout()
    save(fig, path)


def _fence(text: str, lang: str = "") -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _audit_section(audit: dict | None) -> str:
    if not audit:
        return "No judge audit for this run (`cai audit` was not run), so the judge's biases are unmeasured here."
    lines = ["From `audit/report.json` of this run (each figure with its n and 95% interval there):", ""]
    for key in AUDIT_KEYS:
        part = audit.get(key) or {}
        if part.get("measured"):
            lines.append(f"- **{key}**: {part.get('summary', '').strip()}")
        else:
            lines.append(f"- **{key}**: not measured" + (f" ({part['summary'].strip()})" if part.get("summary") else ""))
    return "\n".join(lines)


def _models_section(run: dict) -> str:
    m = run.get("model") or {}
    lines = ["| role | backend | model | identity |", "|---|---|---|---|",
             f"| policy (answers, critiques, revisions) | {m.get('backend')} | `{m.get('spec')}` | `{m.get('identity')}` |"]
    judge = run.get("judge")
    if judge:
        same = " (same model as the policy)" if judge.get("same_as_policy") else ""
        lines.append(f"| judge (AI feedback){same} | {judge.get('backend')} | `{judge.get('spec')}` | `{judge.get('identity')}` |")
        note = ""
    else:
        note = "\n\nNo AI feedback for this run: `chosen` is the final revision and `rejected` the initial answer (the SL-CAI pair); no judge compared them."
    return "\n".join(lines) + note


def _settings_section(config: dict) -> str:
    keep = ("rounds", "seed", "few_shot", "system_prompt", "test_size", "limit")
    lines = [f"- `{k}`: {json.dumps(config.get(k))}" for k in keep if k in config]
    policy = config.get("policy") or {}
    if policy:  # the model spec without server details (URLs, key variables)
        options = {k: v for k, v in (policy.get("options") or {}).items() if k in ("batch_size", "dtype")}
        lines.append(f"- policy: `{policy.get('backend')}` `{policy.get('model')}`"
                     + "".join(f", {k}={v}" for k, v in options.items()))
    for stage, s in (config.get("sampling") or {}).items():
        lines.append(f"- sampling `{stage}`: " + ", ".join(f"{k}={v}" for k, v in s.items()))
    for src in config.get("prompts") or []:
        lines.append(f"- prompts: `{Path(src['path']).name}`" + (f" (split {src['split']})" if src.get("split") else ""))
    return "\n".join(lines)


def _counts_section(run: dict) -> str:
    c = run.get("counts") or {}
    splits = c.get("splits") or {}
    lines = ["| split | rows |", "|---|---|", *[f"| {s} | {n} |" for s, n in sorted(splits.items())],
             "", f"- prompts: {c.get('prompts')}, records: {c.get('records')}, pairs: {c.get('pairs')}",
             f"- flagged and left out of the pairs: {c.get('flagged_records', 0)}"]
    for reason, n in (c.get("flagged") or {}).items():
        lines.append(f"  - {reason}: {n}")
    if "ties" in c:
        lines.append(f"- judge ties (no preference): {c['ties']}")
    elif not run.get("judge"):
        lines.append("- judge ties: none counted (no AI feedback for this run)")
    if "judge_malformed" in c:
        lines.append(f"- malformed judge answers: {c['judge_malformed']}")
    if "comparisons" in c:
        lines.append(f"- judge comparisons: {c['comparisons']}")
    lines += _review_lines(c.get("review"))
    lines.append(f"- model calls: {c.get('model_calls')} computed, {c.get('cache_hits')} answered from the cache")
    t = (run.get("tokens") or {}).get("total")
    if t:
        cost = run.get("cost")
        spent = f" (${cost['usd']:.4f}; ${cost['saved_usd']:.4f} saved)" if cost else ""
        lines.append(f"- tokens: {t['input']} input and {t['output']} output spent, {t['saved_input']} input and "
                     f"{t['saved_output']} output saved by the cache{spent}")
    return "\n".join(lines)


def _reviewed_note(c: dict) -> str:
    r = c.get("review") or {}
    n, sft = r.get("reviewed", 0), (r.get("sft") or {}).get("reviewed", 0)
    if not n and not sft:
        return "nobody reviewed them"
    return f"a person reviewed {n} preference rows and {sft} SFT rows (the `reviewed` column), not the rest"


def _review_lines(r: dict | None) -> list[str]:
    if not r:
        return ["- reviewed by a person: none (`cai review` was not used on this run)"]
    s = r["sft"]
    lines = [f"- reviewed by a person (`cai review`): {r['reviewed']} preference rows (accepted {r['accepted']}, "
             f"edited {r['edited']}, rejected and left out {r['rejected']}); {s['reviewed']} SFT rows (accepted "
             f"{s['accepted']}, edited {s['edited']}, rejected {s['rejected']}); the `reviewed` column marks them"]
    if r["stale"]:
        lines.append(f"  - {r['stale']} decisions were made on text that has since changed and were not applied")
    return lines


USAGE = '''```python
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

ds = load_dataset("{repo_id}")
model = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
tok = AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
args = DPOConfig(output_dir="dpo", per_device_train_batch_size=4, max_length=512)
trainer = DPOTrainer(model=model, args=args, train_dataset=ds["train"], processing_class=tok)
trainer.train()
```'''


def build_card(run: dict, constitution_text: str, usage: dict[str, int], principles: list[str],
               repo_id: str, audit: dict | None, license: str, data_files: dict[str, dict[str, str]],
               histogram: str | None = HISTOGRAM) -> DatasetCard:
    """The card as a huggingface_hub DatasetCard (front matter validated by its own data class).

    `data_files` maps folder (data, sft) -> split -> path in the repo.
    """
    c = run.get("counts") or {}
    cons = run.get("constitution") or {}
    has_sft = bool(data_files.get("sft"))
    configs = [{"config_name": "default", "default": True,
                "data_files": [{"split": s, "path": p} for s, p in sorted(data_files.get("data", {}).items())]}]
    if has_sft:
        configs.append({"config_name": "sft",
                        "data_files": [{"split": s, "path": p} for s, p in sorted(data_files["sft"].items())]})
    pretty = f"Constitutional AI preferences: {cons.get('name')}" + (f" v{cons['version']}" if cons.get("version") else "")
    data = DatasetCardData(
        license=license, language=["en"], task_categories=["text-generation"],
        tags=["constitutional-ai", "rlaif", "dpo", "synthetic", "cai"],
        size_categories=[size_category(int(c.get("pairs") or 0))], pretty_name=pretty, configs=configs,
    )
    feedback = "judge-labelled preference pairs (RL-CAI)" if run.get("judge") else "SL-CAI preference pairs"
    total_rounds = sum(usage.values()) or 1
    image = f"![Principle usage]({histogram})\n\n" if histogram else ""
    judge_note = ("The judge prefers answers for reasons beyond the principle (position, length, format, its own "
                  "style); see the audit above." if run.get("judge") else
                  "No judge labelled these pairs; the preference is 'revision over initial answer', which assumes "
                  "revising helped.")
    sft_note = "The `sft` config is the fine-tuning view: `messages` = prompt + final revision." if has_sft else ""
    usage_snippet = USAGE.replace("{repo_id}", repo_id)
    body = f"""
# {pretty}

{feedback} made by `cai generate` from a written constitution. A small
model answered each prompt, critiqued its answer against a principle drawn from the constitution, and
revised it, for {(run.get('config') or {}).get('rounds')} round(s). Each row is in TRL's conversational
preference schema: `prompt`, `chosen` and `rejected` are message lists; provenance columns (`id`,
`constitution_sha256`, `principle_ids`, `rounds`, `model`, `category`) trace it back to its record.
{sft_note}

## Constitution

- name: **{cons.get('name')}**, version: **{cons.get('version')}**
- sha256: `{cons.get('sha256')}` (over the canonical JSON of the parsed file; also in every row's `constitution_sha256`)
- file: `constitution.yaml` in this repository ({len(principles)} principles)

<details>
<summary>Full constitution text</summary>

{_fence(constitution_text, "yaml")}

</details>

## Models

{_models_section(run)}

## Pipeline settings

{_settings_section(run.get('config') or {})}

## Counts

{_counts_section(run)}

## Principle usage

How many critique rounds drew each principle ({sum(usage.values())} rounds in all, flagged records included).

{image}| principle | rounds | share |
|---|---|---|
""" + "\n".join(f"| {p} | {usage.get(p, 0)} | {usage.get(p, 0) / total_rounds:.1%} |" for p in principles) + f"""

## Judge audit

{_audit_section(audit)}

## Usage with TRL

{usage_snippet}

## Limitations

- **Synthetic.** Every answer, critique and revision was written by a model, `{(run.get('model') or {}).get('spec')}`; {_reviewed_note(c)}. Revisions can still be wrong, unhelpful or harmful, and `chosen` is only *preferred by the pipeline*, not known to be good.
- **Judge biases.** {judge_note}
- **Model size.** A small model follows critique and revision requests weakly; quality gates drop the worst records (see flagged counts), not all bad ones.
- **Coverage.** The prompts cover what the prompt files cover, nothing more.

## Provenance

- made with cai {run.get('cai_version')}; {", ".join(f"{k} {v}" for k, v in (run.get('versions') or {}).items())}
- `run.json` in this repository is the run's resolved config, counts, timings and versions (no secrets).
"""
    # Not from_template: jinja would interpret braces in the constitution text.
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}")
