"""Records -> a Hugging Face dataset folder in TRL's conversational preference schema.

`datasets.load_dataset(RUN/dataset)` gives the preference pairs (prompt /
chosen / rejected message lists plus provenance columns) and
`load_dataset(RUN/sft)` the SL-CAI fine-tuning view (`messages` = prompt +
final revision), as in the H4 recipes' train_prefs / train_sft. Each folder
holds plain `{split}.parquet` files that `datasets` finds by name: a README
`configs:` block would make every run's folder share one `datasets` cache
entry (its key ignores the folder path), so a second run would load the
first one's rows. Folders are derived from records only, rebuilt whole, then
swapped in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable

from cai.labels import label
from cai.review.decisions import Review, apply

import pyarrow as pa
import pyarrow.parquet as pq

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_PROVENANCE = [
    ("id", pa.string()), ("constitution_sha256", pa.string()),
    ("principle_ids", pa.list_(pa.string())), ("rounds", pa.int32()),
    ("model", pa.string()), ("category", pa.string()),
    ("reviewed", pa.string()),  # null, or what a person did in `cai review`: accepted / edited
]
# AI-feedback columns, present when the run had a judge (`feedback.enabled`).
_LABELS = [
    ("pair", pa.string()), ("chosen_prob", pa.float64()), ("margin", pa.float64()),
    ("p_first", pa.float64()), ("p_second", pa.float64()),
    ("judge_principle_ids", pa.list_(pa.string())), ("position_consistent", pa.bool_()),
    ("tie", pa.bool_()),
]
SCHEMAS = {
    "default": pa.schema([("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES), *_PROVENANCE]),
    "sft": pa.schema([("messages", MESSAGES), *_PROVENANCE]),
}
LABELLED = pa.schema([*SCHEMAS["default"], *_LABELS])
FOLDERS = {"default": "dataset", "sft": "sft"}
_ROWS_PER_WRITE = 1024


def split_of(example_id: str, test_size: float) -> str:
    """Deterministic by id, so a prompt keeps its split across runs and edits."""
    bucket = int.from_bytes(hashlib.sha256(example_id.encode()).digest()[:4], "big") / 2**32
    return "test" if bucket < test_size else "train"


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def rows(record: dict) -> dict[str, dict]:
    """The SL-CAI rows of a record: the revision pair and the SFT example."""
    prompt = [{"role": "user", "content": record["prompt"]}]
    final = _assistant(record["final"])
    common = {
        "id": record["id"], "constitution_sha256": record["constitution_sha256"],
        "principle_ids": [r["principle_id"] for r in record["rounds"]],
        "rounds": len(record["rounds"]), "model": record["model"], "category": record.get("category"),
        "reviewed": None,
    }
    return {
        "default": {"prompt": prompt, "chosen": final,
                    "rejected": _assistant(record["initial"]), **common},
        "sft": {"messages": prompt + final, **common},
    }


class _Writers:
    """One parquet writer per (config, split), opened on first row: an empty
    parquet file breaks load_dataset, so empty splits get no file at all."""

    def __init__(self, root: Path, schemas: dict | None = None):
        self.root = root
        self.schemas = {**SCHEMAS, **(schemas or {})}
        self.buffers: dict[tuple[str, str], list[dict]] = {}
        self.writers: dict[tuple[str, str], pq.ParquetWriter] = {}
        self.counts: Counter = Counter()

    def add(self, config: str, split: str, row: dict) -> None:
        buf = self.buffers.setdefault((config, split), [])
        buf.append(row)
        self.counts[(config, split)] += 1
        if len(buf) >= _ROWS_PER_WRITE:
            self._flush(config, split)

    def _flush(self, config: str, split: str) -> None:
        buf = self.buffers[(config, split)]
        if not buf:
            return
        if (config, split) not in self.writers:
            path = self.root / FOLDERS[config] / f"{split}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writers[(config, split)] = pq.ParquetWriter(path, self.schemas[config])
        self.writers[(config, split)].write_table(pa.Table.from_pylist(buf, schema=self.schemas[config]))
        buf.clear()

    def close(self) -> None:
        for config, split in list(self.buffers):
            self._flush(config, split)
        for writer in self.writers.values():
            writer.close()


def judged_rows(record: dict, base: dict, feedback) -> tuple[list[dict], Counter]:
    """Preference rows from a record's judged pairs, chosen by the judge; and label counts."""
    counts: Counter = Counter()
    fb = record.get("feedback") or {}
    counts["skipped_identical"] += fb.get("skipped", 0)
    found = []
    for comp in fb.get("comparisons", []):
        counts["comparisons"] += 1
        counts["position_consistent"] += bool(comp["position_consistent"])
        counts["judge_malformed"] += comp["malformed"]
        lab = label(comp, feedback)
        counts[lab["status"]] += 1
        counts["ties"] += bool(lab.get("tie"))
        if lab["status"] != "pair":
            continue
        found.append({**base, "chosen": _assistant(lab["chosen"]), "rejected": _assistant(lab["rejected"]),
                      "pair": comp["pair"], "chosen_prob": lab["chosen_prob"], "margin": lab["margin"],
                      "p_first": lab["p_first"], "p_second": lab["p_second"],
                      "judge_principle_ids": comp["principle_ids"],
                      "position_consistent": comp["position_consistent"], "tie": lab["tie"]})
    return found, counts


def build(records: Iterable[dict], run_dir: str | Path, test_size: float, feedback=None,
          review: Review | None = None) -> dict:
    """Write RUN/dataset and RUN/sft; return counts (records, pairs, flagged by reason, rows per split).

    With `feedback` (an enabled FeedbackConfig) the pairs are the judged ones,
    oriented by the judge and carrying their soft labels. `review` (RUN/review.jsonl)
    is honoured: rejected rows leave, edits replace the chosen text, swaps swap.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*run_dir.glob(".build-*"), *run_dir.glob(".old-*")]:  # left by a killed build
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=run_dir))
    writers = _Writers(tmp, {"default": LABELLED} if feedback else {})
    review = review if review is not None else Review([])
    flagged: Counter = Counter()
    labels: Counter = Counter()
    n_records = n_flagged = 0
    try:
        for rec in records:
            n_records += 1
            n_flagged += bool(rec["flags"])
            flagged.update(rec["flags"])
            split = split_of(rec["id"], test_size)
            made = rows(rec)
            decided = review.for_record(rec)
            sft = _sft_row(rec, made["sft"], decided, review)
            if sft is not None:
                writers.add("sft", split, sft)
            if feedback:
                judged, counts = judged_rows(rec, made["default"], feedback)
                labels.update(counts)
                comps = {c["pair"]: c for c in rec["feedback"]["comparisons"]} if judged else {}
                for row in judged:
                    row = _honour(row, review.for_pair(rec, comps[row["pair"]], decided), review, judged=True)
                    if row is not None:
                        writers.add("default", split, row)
            elif not rec.get("kept") and (not rec["flags"] or (decided and decided["decision"] != "reject")):
                # A person's accept or edit brings a flagged record back: they read it (a kept answer
                # has no revision to prefer).
                row = _honour(made["default"], decided, review, judged=False)
                if row is not None:
                    writers.add("default", split, row)
        writers.close()
        splits = {c: {s: n for (cc, s), n in writers.counts.items() if cc == c} for c in SCHEMAS}
        for config, folder in FOLDERS.items():
            (tmp / folder).mkdir(exist_ok=True)
            _write_readme(tmp / folder, config, bool(feedback))
            _swap_in(tmp / folder, run_dir / folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"records": n_records, "pairs": sum(splits["default"].values()), "flagged_records": n_flagged,
           "flagged": dict(sorted(flagged.items())), "splits": splits["default"]}
    if feedback:
        # Every judged pair is accounted for: rows + ties left out + low_confidence + unusable.
        out.update({k: labels.get(k, 0) for k in (
            "comparisons", "ties", "low_confidence", "judge_malformed", "position_consistent",
            "skipped_identical")}, unusable=labels.get("malformed", 0), ties_excluded=labels.get("tie", 0))
    if review.latest or review.problems:
        out["review"] = review.counts()
    return out


def _sft_row(rec: dict, row: dict, decided: dict | None, review: Review) -> dict | None:
    if decided is None:
        return None if rec["flags"] else row
    if decided["decision"] == "reject":
        review.sft["rejected"] += not rec["flags"]  # a flagged record had no row to lose
        return None
    # The SFT answer is the record's chosen one: the edit, else the initial answer when swapped, else the final.
    chosen, _, kind = apply(decided, rec["final"], rec["initial"])
    review.sft[kind] += 1
    return {**row, "messages": row["messages"][:1] + _assistant(chosen), "reviewed": kind}


def _honour(row: dict, decided: dict | None, review: Review, judged: bool) -> dict | None:
    """A preference row after a person's decision (None: rejected); the judge's numbers follow a swap."""
    out = apply(decided, row["chosen"][-1]["content"], row["rejected"][-1]["content"])
    if out is None:
        review.rows["rejected"] += 1
        return None
    chosen, rejected, kind = out
    if kind is None:
        return row
    review.rows[kind] += 1
    row = {**row, "chosen": _assistant(chosen), "rejected": _assistant(rejected), "reviewed": kind}
    if judged and decided.get("swap"):  # the judge's preference, seen from the new chosen answer
        row.update(chosen_prob=1 - row["chosen_prob"], margin=-row["margin"],
                   p_first=1 - row["p_second"], p_second=1 - row["p_first"])
    return row


def _write_readme(root: Path, config: str, judged: bool = False) -> None:
    if config == "sft":
        what = "the SFT view: `messages` = user prompt + final revision (the SL-CAI fine-tuning data)"
    elif judged:
        what = ("preference pairs in TRL's conversational schema, `chosen` being the answer the AI judge "
                "preferred, with its soft labels (chosen_prob, margin, p_first, p_second)")
    else:
        what = "preference pairs in TRL's conversational schema: `prompt`, `chosen` (final revision), `rejected` (initial answer)"
    (root / "README.md").write_text(
        "---\ntags: [constitutional-ai, synthetic]\n---\n\n# Constitutional AI data\n\n"
        f"Made by `cai generate` from its run records: {what}, plus provenance columns "
        "(id, constitution_sha256, principle_ids, rounds, model, category).\n", encoding="utf-8")


def _swap_in(new: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=".old-", dir=target.parent))
        os.rename(target, old / "d")
    os.rename(new, target)
    if old:
        shutil.rmtree(old, ignore_errors=True)
