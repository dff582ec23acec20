"""Candidate pairs for AI feedback, the stage that judges them, and the labels they become.

Candidates per prompt: the SL-CAI pair (final revision vs initial answer,
the H4 recipe's default) and/or `samples` answers sampled from the policy,
judged pairwise (the paper's RL-CAI pairs). A judged pair becomes a
preference row when the judge separates it: ties and low-confidence pairs
stay in the records and are counted, never silently dropped.
"""

from __future__ import annotations

from itertools import combinations

from cai import quality
from cai.backends import CallFailed
from cai.config import FeedbackConfig
from cai.judge import COT_STAGE as COT, SCORE_STAGE as JUDGE, Comparison, Judge
from cai.labels import REVISION_PAIR
from cai.stage import ID_SEP, Calls


def sample_stage(i: int) -> str:
    return f"sample:{i}"


class FeedbackStage:
    """Runs after SL-CAI on the same chunk: sample answers (if asked), then judge every candidate pair."""

    def __init__(self, judge: Judge, config: FeedbackConfig, system: list[dict]):
        self.judge, self.config, self.system = judge, config, system

    @property
    def sampled(self) -> bool:
        return self.config.pairs in ("samples", "both")

    def stages(self) -> list[str]:
        names = [sample_stage(i) for i in range(1, self.config.samples + 1)] if self.sampled else []
        return names + ([COT] if self.config.cot else []) + [JUDGE]

    def candidates(self, rec: dict) -> list[tuple[str, str, str]]:
        """(pair name, a, b) per candidate pair of a record."""
        found = []
        if self.config.pairs in (REVISION_PAIR, "both") and not rec["flags"]:
            found.append((REVISION_PAIR, rec["final"], rec["initial"]))
        samples = rec.get("feedback", {}).get("samples", [])
        for i, j in combinations(range(len(samples)), 2):
            a, b = samples[i], samples[j]
            # Identical or empty answers make a pair that teaches nothing: skipped and counted.
            if a.strip() and b.strip() and not quality.near_duplicate(a, b):
                found.append((f"samples:{i + 1}-{j + 1}", a, b))
        return found

    def run(self, records: list[dict], calls: Calls) -> None:
        """Fill rec["feedback"] = {samples, comparisons, skipped}; a failed call marks rec["failed"]."""
        # Kept (helpfulness) records are not judged against harmlessness principles.
        live = [r for r in records if "failed" not in r and not r.get("kept")]
        for rec in live:
            rec["feedback"] = {"samples": [], "comparisons": [], "skipped": 0}
        if self.sampled:
            for i in range(1, self.config.samples + 1):
                convs = [self.system + [{"role": "user", "content": r["prompt"]}] for r in live]
                outs = calls.chat(sample_stage(i), convs, [r["id"] for r in live])
                for rec, out in zip(live, outs):
                    if isinstance(out, CallFailed):
                        rec["failed"] = {"stage": sample_stage(i), "error": str(out)}
                    else:
                        rec["feedback"]["samples"].append(out)
                live = [r for r in live if "failed" not in r]
        items, owners = [], []
        for rec in live:
            n_samples = len(rec["feedback"]["samples"])
            found = self.candidates(rec)
            rec["feedback"]["skipped"] = n_samples * (n_samples - 1) // 2 - sum(
                name != REVISION_PAIR for name, _, _ in found)
            for name, a, b in found:
                items.append(Comparison(id=f"{rec['id']}{ID_SEP}{name}", prompt=rec["prompt"], a=a, b=b))
                owners.append((rec, name))
        verdicts = self.judge.compare(items, calls)
        for (rec, name), item, v in zip(owners, items, verdicts):
            if isinstance(v, CallFailed):
                rec.setdefault("failed", {"stage": JUDGE, "error": str(v)})
                continue
            rec["feedback"]["comparisons"].append({
                "pair": name, "a": item.a, "b": item.b, "p_a": v.p_a, "p_first": v.p_first,
                "p_second": v.p_second, "principle_ids": v.principle_ids, "per_principle": v.per_principle,
                "position_consistent": v.position_consistent, "malformed": v.malformed,
                "option_mass": v.option_mass, "reasoning": v.reasoning,
            })
