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

import pyarrow as pa
import pyarrow.parquet as pq

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_PROVENANCE = [
    ("id", pa.string()), ("constitution_sha256", pa.string()),
    ("principle_ids", pa.list_(pa.string())), ("rounds", pa.int32()),
    ("model", pa.string()), ("category", pa.string()),
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


def build(records: Iterable[dict], run_dir: str | Path, test_size: float, feedback=None) -> dict:
    """Write RUN/dataset and RUN/sft; return counts (records, pairs, flagged by reason, rows per split).

    With `feedback` (an enabled FeedbackConfig) the pairs are the judged ones,
    oriented by the judge and carrying their soft labels.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*run_dir.glob(".build-*"), *run_dir.glob(".old-*")]:  # left by a killed build
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=run_dir))
    writers = _Writers(tmp, {"default": LABELLED} if feedback else {})
    flagged: Counter = Counter()
    labels: Counter = Counter()
    n_records = 0
    try:
        for rec in records:
            n_records += 1
            flagged.update(rec["flags"])
            split = split_of(rec["id"], test_size)
            made = rows(rec)
            if not rec["flags"]:
                writers.add("sft", split, made["sft"])
            if feedback:
                judged, counts = judged_rows(rec, made["default"], feedback)
                labels.update(counts)
                for row in judged:
                    writers.add("default", split, row)
            elif not rec["flags"] and not rec.get("kept"):  # a kept answer has no revision to prefer
                writers.add("default", split, made["default"])
        writers.close()
        splits = {c: {s: n for (cc, s), n in writers.counts.items() if cc == c} for c in SCHEMAS}
        for config, folder in FOLDERS.items():
            (tmp / folder).mkdir(exist_ok=True)
            _write_readme(tmp / folder, config, bool(feedback))
            _swap_in(tmp / folder, run_dir / folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"records": n_records, "pairs": sum(splits["default"].values()),
           "flagged_records": n_records - sum(splits["sft"].values()),
           "flagged": dict(sorted(flagged.items())), "splits": splits["default"]}
    if feedback:
        # Every judged pair is accounted for: rows + ties left out + low_confidence + unusable.
        out.update({k: labels.get(k, 0) for k in (
            "comparisons", "ties", "low_confidence", "judge_malformed", "position_consistent",
            "skipped_identical")}, unusable=labels.get("malformed", 0), ties_excluded=labels.get("tie", 0))
    return out


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
