"""eval.json -> one self-contained report.html: figures with intervals, plots inlined as PNG, answers side by side."""

from __future__ import annotations

import html
from pathlib import Path

from cai.plots import data_uri as _png, pyplot
from cai.runfiles import write_text_atomic


def _bars(result: dict) -> str:
    plt = pyplot()
    m = result["metrics"]
    rows = [("harmful compliance\n(judge)", "harmful_compliance", "judge"),
            ("harmful compliance\n(phrase)", "harmful_compliance", "phrase"),
            ("benign refusal\n(judge)", "benign_refusal", "judge"),
            ("benign refusal\n(phrase)", "benign_refusal", "phrase")]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for j, name in enumerate(("baseline", "trained")):
        xs, ys, lo, hi = [], [], [], []
        for i, (_, metric, how) in enumerate(rows):
            p = m[name][metric][how]
            if p["value"] is None:
                continue
            xs.append(i + (j - 0.5) * 0.38)
            ys.append(p["value"])
            lo.append(p["value"] - p["ci95"][0])
            hi.append(p["ci95"][1] - p["value"])
        ax.bar(xs, ys, width=0.36, yerr=[lo, hi], capsize=3, label=name)
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate (95 % Wilson)")
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def _hist(result: dict) -> str | None:
    plt = pyplot()
    ps = [e["p_trained_better"] for e in result["examples"] if e.get("p_trained_better") is not None]
    if not ps:
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(ps, bins=10, range=(0, 1))
    ax.axvline(0.5, color="k", lw=1)
    ax.set_xlabel("judge P(trained answer is more harmless)")
    ax.set_ylabel("red-team prompts")
    fig.tight_layout()
    return _png(fig)


def _ci(p: dict) -> str:
    if p.get("value") is None:
        return "n/a"
    return f"{p['value']:.3f} <small>[{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}], n={p['n']}</small>"


def _signed(p: dict) -> str:
    if p.get("value") is None:
        return "n/a"
    return f"{p['value']:+.3f} <small>[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}], n={p['n']}</small>"


def _differences(m: dict) -> str:
    """trained - baseline per figure, paired by prompt; an interval that excludes 0 is a real change."""
    d, pref = m["difference"], m["difference"]["harmlessness_preference"]
    rows = [("P(trained more harmless) - P(baseline more harmless)", pref["p_trained_minus_p_baseline"]),
            ("wins - losses (share of red-team prompts)", pref["wins_minus_losses"])]
    for label, metric in (("harmful compliance", "harmful_compliance"), ("benign refusal", "benign_refusal")):
        rows += [(f"{label}, judge", d[metric]["judge"]), (f"{label}, phrase check", d[metric]["phrase"])]
    rows += [(f"answer length (words), {k}", d["length_words"][k]) for k in ("red_team", "benign")]
    body = "".join(f"<tr><td>{label}</td><td>{_signed(p)}</td><td>{p['interval']}</td></tr>" for label, p in rows)
    return f"<table><tr><th>trained - baseline</th><th>difference, 95 %</th><th>interval</th></tr>{body}</table>"


def write_report(result: dict, path: Path) -> None:
    m, e = result["metrics"], html.escape
    pref = m["harmlessness_preference"]
    table = [("harmful compliance, judge", "harmful_compliance", "judge"),
             ("harmful compliance, phrase check", "harmful_compliance", "phrase"),
             ("benign refusal, judge", "benign_refusal", "judge"),
             ("benign refusal, phrase check", "benign_refusal", "phrase")]
    rows = "".join(f"<tr><td>{label}</td><td>{_ci(m['baseline'][a][b])}</td><td>{_ci(m['trained'][a][b])}</td></tr>"
                   for label, a, b in table)
    for kind in ("red_team", "benign"):
        rows += (f"<tr><td>answer length (words), {kind}</td><td>{_ci(m['baseline']['length_words'][kind])}</td>"
                 f"<td>{_ci(m['trained']['length_words'][kind])}</td></tr>")
    hist = _hist(result)
    examples = ""
    for ex in result["examples"][:40]:
        score = ex.get("p_trained_better")
        note = f"P(trained more harmless) = {score:.2f}" if score is not None else ""
        if ex.get("outcome"):
            note += f" ({ex['outcome']}{', identical answers' if ex.get('identical') else ''})"
        for key in ("p_refusal", "p_compliance"):
            if ex.get(f"trained_{key}") is not None and ex.get(f"baseline_{key}") is not None:
                note += f" &nbsp; judge P({key[2:]}): baseline {ex[f'baseline_{key}']:.2f}, trained {ex[f'trained_{key}']:.2f}"
        examples += (f"<tr><td><b>{e(ex['id'])}</b> <small>{e(ex.get('kind') or '')}</small><br>{e(ex['prompt'])}"
                     f"<br><small>{note}</small></td><td>{e(ex['baseline_answer'])}</td><td>{e(ex['trained_answer'])}</td></tr>")
    models = result["models"]
    warnings = "".join(f"<p style='color:#a60'><b>warning:</b> {e(w)}</p>" for w in result.get("warnings", []))
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>cai eval</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;width:100%}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:14px}}th{{background:#eee}}</style></head><body>
<h1>cai eval</h1>
<p>trained: <code>{e(models['trained'])}</code><br>baseline: <code>{e(models['baseline'])}</code><br>
judge: <code>{e(models['judge'])}</code><br>prompts: {result['counts'].get('red_team', 0)} red-team,
{result['counts'].get('benign', 0)} benign. Intervals are 95 % (Wilson for rates, bootstrap for means).</p>
{warnings}
<h2>What training changed: trained - baseline, paired by prompt</h2>
<p>Both models answered the same prompts, so each difference is taken prompt by prompt: Newcombe's
paired interval for rates, a paired bootstrap over prompts for means. An interval that excludes 0 is
a change the prompts can tell apart from chance.</p>
{_differences(m)}
<h2>Harmlessness preference (judge, both orders averaged)</h2>
<p>mean P(trained answer more harmless): {_ci(pref['p_trained_better'])}<br>
{pref['wins']} wins, {pref['ties']} ties ({pref['ties_identical']} identical answers, not judged; else
|P - 0.5| &lt; {pref['tie_threshold']}), {pref['losses']} losses<br>
win rate, ties counted half: {_ci(pref['win_rate'])}<br>
judge consistent across swapped orders: {_ci(pref['position_consistent'])}</p>
{f'<img src="{hist}">' if hist else ''}
<h2>Refusals and compliance</h2>
<table><tr><th>measure</th><th>baseline</th><th>trained</th></tr>{rows}</table>
<img src="{_bars(result)}">
<h2>Answers side by side</h2>
<table><tr><th>prompt</th><th>baseline</th><th>trained</th></tr>{examples}</table>
</body></html>"""
    write_text_atomic(path, doc)
