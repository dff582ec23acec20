"""The audit's self-contained report.html: figures with intervals, plots as data-URI PNGs, no remote assets."""

from __future__ import annotations

import html
from pathlib import Path

from cai.audit.figures import MODES, fmt
from cai.plots import data_uri, pyplot
from cai.runfiles import write_text_atomic

plt = pyplot()

COLORS = {"raw": "#d95f02", "mitigated": "#1b9e77"}


def _png(fig) -> str:
    return data_uri(fig, dpi=110, bbox_inches="tight")


def _bars(ax, labels: list[str], series: dict[str, list[dict]], reference: float | None, ylabel: str,
          ylim: tuple[float, float] = (0, 1.05)) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (name, figs) in enumerate(series.items()):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(labels))]
        vals = [f["value"] if f.get("value") is not None else 0 for f in figs]
        lows = [f["ci95"][0] if f["ci95"][0] is not None else v for v, f in zip(vals, figs)]
        highs = [f["ci95"][1] if f["ci95"][1] is not None else v for v, f in zip(vals, figs)]
        errs = [[max(v - lo, 0) for v, lo in zip(vals, lows)], [max(hi - v, 0) for v, hi in zip(vals, highs)]]
        ax.bar(xs, vals, width, yerr=errs, capsize=3, label=name, color=COLORS.get(name, "#7570b3"))
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def plots(report: dict) -> dict[str, str]:
    out = {}
    acc = report["accuracy"]
    kinds = [k for k, v in acc.items() if isinstance(v, dict) and "raw" in v]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    _bars(ax, kinds, {m: [acc[k][m] for k in kinds] for m in MODES}, 0.5, "picks the known better answer")
    ax.set_title("Judge accuracy on probes with a known better answer (0.5 = chance)")
    out["accuracy"] = _png(fig)

    pos = report["position"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = ["orders agree (raw)", "first shown picked (raw)", "flip rate (raw)", "orders agree (ensemble)"]
    figs = [pos["raw"]["consistency"], pos["raw"]["primacy_share"], pos["raw"]["flip_rate"],
            pos["mitigated"]["consistency"]]
    _bars(ax, labels, {"share": figs}, 0.5, "share")
    ax.set_title("Position bias")
    out["position"] = _png(fig)

    prefs = {"longer": report["length"]["prefers_longer"],
             "longer, when worse": report["length"]["prefers_longer_when_longer_is_worse"],
             "padded copy": report["length"]["prefers_padded_copy"], "bulleted copy": report["format"]["prefers_list"]}
    sp = report["self_preference"]
    if sp["measured"]:
        prefs["own answers"] = sp["prefers_own"]
        if sp["other_model_as_judge"]["measured"]:  # the same answers, judged by the other model
            prefs["judge model's answers, by the policy"] = sp["other_model_as_judge"]["prefers_judge_model_answers"]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    _bars(ax, list(prefs), {m: [v[m] for v in prefs.values()] for m in MODES}, 0.5, "P(judge prefers it)")
    ax.set_title("Length, format and self-preference (0.5 = no bias; ties apart)")
    out["preferences"] = _png(fig)

    pert = report["perturbations"]
    cues = [k for k, v in pert.items() if isinstance(v, dict) and "cue_pull" in v]
    names = [k for k, v in pert.items() if isinstance(v, dict) and "robustness" in v]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    _bars(left, cues, {m: [pert[n]["cue_pull"][m] for n in cues] for m in MODES}, 0.0,
          "change in P(cued answer wins)", (-1, 1))
    left.set_title("Cue pull (0 = no effect)")
    _bars(right, names, {m: [pert[n]["robustness"][m] for n in names] for m in MODES}, None, "same verdict")
    right.set_title("Robustness (noise_floor: fresh principle draw)")
    out["perturbations"] = _png(fig)

    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for m in MODES:
        rel = report["calibration"][m]["reliability"]
        ece = report["calibration"][m]["ece"]["value"]
        ax.plot([b["mean_predicted"] for b in rel], [b["observed"] for b in rel], marker="o",
                color=COLORS[m], label=f"{m} (ECE {ece:.2f})" if ece is not None else m)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("judge P((A) is better)")
    ax.set_ylabel("observed share where (A) is better")
    ax.set_title("Calibration on the known-better probes")
    ax.legend(fontsize=8)
    out["calibration"] = _png(fig)
    return out


def _rows(section: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in section.items():
        if key in ("summary", "measured", "note", "reliability") or not isinstance(value, dict):
            continue
        if "value" in value:
            rows.append((prefix + key, fmt(value)))
        else:
            rows += _rows(value, f"{prefix}{key} / ")
    return rows


def write_html(path: Path, report: dict, meta: dict) -> None:
    images = plots(report)
    parts = []
    for name, section in report.items():
        body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in _rows(section))
        img = {"accuracy": "accuracy", "position": "position", "length": "preferences",
               "perturbations": "perturbations", "calibration": "calibration"}.get(name)
        measures = f"<p><i>{html.escape(section['measures'])}</i></p>" if section.get("measures") else ""
        parts.append(f"<section><h2>{name}</h2><p>{html.escape(section['summary'])}</p>{measures}"
                     + (f'<img alt="{name} plot" src="{images[img]}">' if img else "")
                     + (f"<table><tr><th>figure</th><th>value [95% CI] (n, ties)</th></tr>{body}</table>" if body else "")
                     + "</section>")
    j = meta["judge"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>cai judge audit</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}
img{{max-width:100%;display:block;margin:.5em 0}}</style></head><body>
<h1>Judge audit</h1>
<p>Judge <code>{html.escape(j['identity'])}</code>, {j['principles_per_comparison']} principles per comparison,
constitution {html.escape(meta['constitution']['name'])} (<code>{meta['constitution']['sha256'][:12]}</code>);
{meta['probes']} probe pairs ({html.escape(', '.join(f'{k}: {v}' for k, v in meta['probe_sources'].items()))}),
{meta['comparisons']} comparisons, {meta['seconds']} s.
<b>raw</b> = one principle, the order shown (a plain judge); <b>mitigated</b> = both orders averaged over the
principle ensemble, the judge built as <code>cai generate --feedback</code> builds it (what it labels
with). Ties (|p &minus; 0.5| &lt; {j['tie_threshold']}, or equal texts) are counted apart, never as losses.
Intervals (95 %) resample whole probes, and probes sharing an answer template together, not single calls;
shares are widened to at least the Wilson interval counting each such cluster once.</p>
{''.join(parts)}</body></html>"""
    write_text_atomic(path, page)
