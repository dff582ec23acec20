"""What `cai generate` says when it ends: the run's outcome as console lines, from its run.json summary."""

from __future__ import annotations


def describe(summary: dict) -> list[tuple[str, str]]:
    """The run's outcome as (kind, line) pairs for the console; kind is info, warning or error."""
    c = summary["counts"]
    flagged = ", ".join(f"{k} {v}" for k, v in c["flagged"].items()) or "none"
    lines = [("info", f"{c['records']} records, {c['pairs']} pairs (flagged: {flagged}); "
                      f"{c['model_calls']} model calls, {c['cache_hits']} cache hits, {c['resumed']} resumed")]
    if "comparisons" in c:
        lines.append(("info", f"AI feedback: {c['comparisons']} judged pairs, {c['ties']} ties, {c['low_confidence']} "
                              f"below min_confidence, {c['unusable']} unusable ({c['judge_malformed']} malformed judge "
                              f"outputs); {c['position_consistent']} consistent across both orders"))
    lines += [("warning", w) for w in summary.get("warnings", [])]
    if not c["pairs"] and c["records"]:
        why = (f"all {c['records']} records flagged ({flagged})" if c.get("flagged_records") == c["records"]
               else f"no pair of the {c['records']} records passed the quality gates and the judge")
        lines.append(("warning", f"0 pairs: {why}; see run.json and records/ for the reasons"))
    if summary.get("stopped"):
        lines.append(("error", summary["stopped"]))
    if "exported" in summary:
        return lines + [("info", _export_line(summary))]
    if c["failed"]:
        first = c["errors"][0]
        share = f"all {c['failed']}" if c["failed"] == c["prompts"] else str(c["failed"])
        # A conversation over the model's context fails the same way every time: say what would help.
        retry = ("raise that limit or use fewer rounds or few-shot examples, then run again"
                 if "conversation is" in first["error"] else "run the same command again to retry them")
        lines.append(("error", f"{share} prompts failed and are left for the next run (first: {first['id']} at "
                               f"{first['stage']}: {first['error']}); {retry}"))
    return lines


def _export_line(summary: dict) -> str:
    e = summary["exported"]
    if not e["requests"]:
        return "nothing left to export: every call is in the cache and the run is complete"
    return (f"{e['requests']} requests for {summary['counts']['failed']} prompts written to {e['path']}: answer them "
            f"(e.g. vllm run-batch -i {e['path']} -o results.jsonl --model MODEL, or a provider's Batch API), "
            "then run with --import-batch results.jsonl, then --export-batch again for the next stage")
