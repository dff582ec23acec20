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

import pyarrow as pa
import pyarrow.parquet as pq

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_PROVENANCE = [
    ("id", pa.string()), ("constitution_sha256", pa.string()),
    ("principle_ids", pa.list_(pa.string())), ("rounds", pa.int32()),
    ("model", pa.string()), ("category", pa.string()),
]
SCHEMAS = {
    "default": pa.schema([("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES), *_PROVENANCE]),
    "sft": pa.schema([("messages", MESSAGES), *_PROVENANCE]),
}
FOLDERS = {"default": "dataset", "sft": "sft"}
_ROWS_PER_WRITE = 1024


def split_of(example_id: str, test_size: float) -> str:
    """Deterministic by id, so a prompt keeps its split across runs and edits."""
    bucket = int.from_bytes(hashlib.sha256(example_id.encode()).digest()[:4], "big") / 2**32
    return "test" if bucket < test_size else "train"


def rows(record: dict) -> dict[str, dict]:
    prompt = [{"role": "user", "content": record["prompt"]}]
    final = [{"role": "assistant", "content": record["final"]}]
    common = {
        "id": record["id"], "constitution_sha256": record["constitution_sha256"],
        "principle_ids": [r["principle_id"] for r in record["rounds"]],
        "rounds": len(record["rounds"]), "model": record["model"], "category": record.get("category"),
    }
    return {
        "default": {"prompt": prompt, "chosen": final,
                    "rejected": [{"role": "assistant", "content": record["initial"]}], **common},
        "sft": {"messages": prompt + final, **common},
    }


class _Writers:
    """One parquet writer per (config, split), opened on first row: an empty
    parquet file breaks load_dataset, so empty splits get no file at all."""

    def __init__(self, root: Path):
        self.root = root
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
            self.writers[(config, split)] = pq.ParquetWriter(path, SCHEMAS[config])
        self.writers[(config, split)].write_table(pa.Table.from_pylist(buf, schema=SCHEMAS[config]))
        buf.clear()

    def close(self) -> None:
        for config, split in list(self.buffers):
            self._flush(config, split)
        for writer in self.writers.values():
            writer.close()


def build(records: Iterable[dict], run_dir: str | Path, test_size: float) -> dict:
    """Write RUN/dataset and RUN/sft; return counts (records, pairs, flagged by reason, rows per split)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*run_dir.glob(".build-*"), *run_dir.glob(".old-*")]:  # left by a killed build
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=run_dir))
    writers = _Writers(tmp)
    flagged: Counter = Counter()
    n_records = 0
    try:
        for rec in records:
            n_records += 1
            if rec["flags"]:
                flagged.update(rec["flags"])
                continue
            split = split_of(rec["id"], test_size)
            for config, row in rows(rec).items():
                writers.add(config, split, row)
        writers.close()
        splits = {c: {s: n for (cc, s), n in writers.counts.items() if cc == c} for c in SCHEMAS}
        for config, folder in FOLDERS.items():
            (tmp / folder).mkdir(exist_ok=True)
            _write_readme(tmp / folder, config)
            _swap_in(tmp / folder, run_dir / folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pairs = sum(splits["default"].values())
    return {"records": n_records, "pairs": pairs, "flagged_records": n_records - pairs,
            "flagged": dict(sorted(flagged.items())), "splits": splits["default"]}


def _write_readme(root: Path, config: str) -> None:
    if config == "sft":
        what = "the SFT view: `messages` = user prompt + final revision (the SL-CAI fine-tuning data)"
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
