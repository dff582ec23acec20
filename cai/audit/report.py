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


def _bars(ax, labels: list[str], series: dict[str, list[dict]], reference: float | None, ylabel: str) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (name, figs) in enumerate(series.items()):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(labels))]
        vals = [f["value"] if f.get("value") is not None else 0 for f in figs]
        errs = [[max(v - (f["ci95"][0] or v), 0) for v, f in zip(vals, figs)],
                [max((f["ci95"][1] or v) - v, 0) for v, f in zip(vals, figs)]]
        ax.bar(xs, vals, width, yerr=errs, capsize=3, label=name, color=COLORS.get(name, "#7570b3"))
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def plots(report: dict) -> dict[str, str]:
    out = {}
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
    if report["self_preference"]["measured"]:
        prefs["own answers"] = report["self_preference"]["prefers_own"]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    _bars(ax, list(prefs), {m: [v[m] for v in prefs.values()] for m in MODES}, 0.5, "P(judge prefers it)")
    ax.set_title("Length, format and self-preference (0.5 = no bias)")
    out["preferences"] = _png(fig)

    pert = report["perturbations"]
    names = [k for k in pert if isinstance(pert[k], dict) and "raw" in pert[k]]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    _bars(ax, names, {m: [pert[n][m] for n in names] for m in MODES}, None, "same verdict as unperturbed")
    ax.set_title("Robustness to perturbations (noise_floor: fresh principle draw)")
    out["perturbations"] = _png(fig)

    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for m in MODES:
        rel = report["calibration"][m]["reliability"]
        ax.plot([b["mean_predicted"] for b in rel], [b["observed"] for b in rel], marker="o",
                color=COLORS[m], label=f"{m} (ECE {report['calibration'][m]['ece']['value']:.2f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("judge P(A better)")
    ax.set_ylabel("observed share where A is better")
    ax.set_title("Calibration (reliability diagram)")
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
        img = {"position": "position", "length": "preferences", "perturbations": "perturbations",
               "calibration": "calibration"}.get(name)
        parts.append(f"<section><h2>{name}</h2><p>{html.escape(section['summary'])}</p>"
                     + (f'<img alt="{name} plot" src="{images[img]}">' if img else "")
                     + (f"<table><tr><th>figure</th><th>value [95% CI] (n)</th></tr>{body}</table>" if body else "")
                     + "</section>")
    j = meta["judge"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>cai judge audit</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}
img{{max-width:100%;display:block;margin:.5em 0}}</style></head><body>
<h1>Judge audit</h1>
<p>Judge <code>{html.escape(j['identity'])}</code>, {j['principles_per_comparison']} principles per comparison,
constitution {html.escape(meta['constitution']['name'])} (<code>{meta['constitution']['sha256'][:12]}</code>);
{meta['probes']} probe pairs, {meta['comparisons']} comparisons, {meta['seconds']} s.
<b>raw</b> = one principle, the order shown (a plain judge); <b>mitigated</b> = both orders averaged over the
principle ensemble (what <code>cai generate --feedback</code> labels with). Intervals: Wilson for
proportions, bootstrap otherwise.</p>
{''.join(parts)}</body></html>"""
    write_text_atomic(path, page)
