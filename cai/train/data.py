"""Where the training data is and the views each algorithm needs.

`--data` is a run directory made by `cai generate` (RUN/dataset holds the
preference pairs, RUN/sft the SL-CAI messages), a dataset folder with
`{split}.parquet` files, a Hub dataset's folder as `cai push` writes it
and `hf download` fetches it (`data/{split}-*.parquet`, `sft/{split}-*.parquet`),
or a `Dataset(Dict).save_to_disk` folder.
Folders are told apart by their columns, not their names. Rows in any of TRL's
shapes are accepted and made conversational here, once: standard (strings:
one user turn, one assistant turn), implicit prompt (chosen/rejected hold the
whole conversation), `from`/`value` messages, prompt/completion for SFT. Views:

- messages  -> prompt/completion (SFT; the loss falls on the completion = the assistant turn)
- pairs     -> prompt/chosen/rejected (+ `chosen_prob` or `margin` when AI-feedback labels are there)
- kto       -> prompt/completion/label, two unpaired rows per pair (TRL's unpair_preference_dataset)
- prompts   -> prompt (PPO/GRPO rollouts)

AI-feedback columns are optional: with `chosen_prob` present, pairs below
`min_confidence` are dropped; `chosen_prob` (soft targets) or `margin` is kept for the
reward model and DPO (cai/train/soft_labels.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cai.errors import InputError, Problem
from cai.runfiles import why_no_pairs

PAIR_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class Source:
    pairs_dir: Path | None  # folder with the preference parquet files
    sft_dir: Path | None  # folder with the messages (or prompt/completion) parquet files
    constitution_sha256: str | None


def _split_files(folder: Path, split: str) -> list[Path]:
    return sorted({*folder.glob(f"{split}.parquet"), *folder.glob(f"{split}-*.parquet")})


def _saved_splits(folder: Path) -> dict[str, Path]:
    """A `save_to_disk` folder: a DatasetDict (dataset_dict.json, a folder per split) or one Dataset (= train)."""
    index = folder / "dataset_dict.json"
    if index.is_file():
        try:
            names = json.loads(index.read_text()).get("splits", [])
        except (ValueError, AttributeError) as exc:
            raise InputError([Problem(str(index), getattr(exc, "lineno", None), "splits",
                                      f"not a save_to_disk index: {exc}")]) from None
        return {n: folder / n for n in names if (folder / n / "state.json").is_file()}
    return {"train": folder} if (folder / "state.json").is_file() else {}


def _columns(folder: Path) -> set[str]:
    import pyarrow.parquet as pq
    from datasets import load_from_disk

    if not folder.is_dir():
        return set()
    if saved := _saved_splits(folder):
        first = next(iter(saved.values()))
        try:
            return set(load_from_disk(str(first)).column_names)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError([Problem(str(first), None, "--data", "unreadable save_to_disk folder: "
                                      + str(exc).splitlines()[0])]) from None
    files = sorted(folder.glob("*.parquet"))
    return set(pq.read_schema(files[0]).names) if files else set()


def _is_pairs(columns: set[str]) -> bool:
    return {"chosen", "rejected"} <= columns


def _is_sft(columns: set[str]) -> bool:
    return bool({"messages", "conversations"} & columns) or {"prompt", "completion"} <= columns


def locate(data: str | None) -> Source:
    if not data:
        raise InputError([Problem("--data", None, "", "give a run directory (from `cai generate`) or a dataset folder")])
    root = Path(data)
    if not root.is_dir():
        raise InputError([Problem(str(root), None, "--data", "no such directory")])
    sha = None
    if (root / "run.json").is_file():
        try:
            sha = json.loads((root / "run.json").read_text()).get("constitution_sha256")
        except (OSError, ValueError):
            pass
    pairs_dir = sft_dir = None
    found = {folder: _columns(folder) for folder in (root / "dataset", root / "data", root / "sft", root)}
    for folder, columns in found.items():
        if pairs_dir is None and _is_pairs(columns):
            pairs_dir = folder
        elif sft_dir is None and _is_sft(columns):
            sft_dir = folder
    if pairs_dir is None and sft_dir is None:
        if why_no_pairs(root):
            raise InputError([Problem(str(root), None, "--data", why_no_pairs(root))])
        seen = next((f"{f.name}/ has columns {', '.join(sorted(c))}; " for f, c in found.items() if c), "")
        raise InputError([Problem(str(root), None, "--data", f"no dataset here: {seen}expected chosen/rejected "
                                  "(preference) or messages or prompt/completion (SFT) columns in "
                                  "RUN/dataset/, RUN/sft/, {train,test}.parquet, data/{split}-*.parquet or a "
                                  "save_to_disk folder")])
    return Source(pairs_dir, sft_dir, sha)


def _conversational(row: dict) -> dict:
    """One row in TRL's conversational shape (see the module docstring)."""
    from trl.data_utils import maybe_convert_to_chatml, maybe_extract_prompt

    row = maybe_extract_prompt(maybe_convert_to_chatml(dict(row)))
    for key, role in (("prompt", "user"), ("chosen", "assistant"), ("rejected", "assistant"),
                      ("completion", "assistant")):
        if isinstance(row.get(key), str):
            row[key] = [{"role": role, "content": row[key]}]
    return row


def _load(folder: Path, split: str):
    from datasets import Dataset, load_from_disk

    if saved := _saved_splits(folder):
        if split not in saved:
            return None
        ds = load_from_disk(str(saved[split]), keep_in_memory=True)  # maps stay in memory, not in their folder
    elif files := _split_files(folder, split):
        ds = Dataset.from_parquet([str(f) for f in files], keep_in_memory=True)
    else:
        return None
    return ds.map(_conversational, remove_columns=[c for c in ("conversations",) if c in ds.column_names])


def _require(ds, columns, folder: Path, what: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise InputError([Problem(str(folder), None, "columns",
                                  f"{what} needs column(s) {', '.join(missing)} (has {', '.join(ds.column_names)})")])


def constitution_hash(source: Source) -> str | None:
    """From run.json, else the dataset's own constitution_sha256 column (when it holds one value)."""
    if source.constitution_sha256:
        return source.constitution_sha256
    for folder in (source.pairs_dir, source.sft_dir):
        ds = folder and _load(folder, "train")
        if ds is not None and "constitution_sha256" in ds.column_names:
            values = set(ds["constitution_sha256"])
            return values.pop() if len(values) == 1 else ",".join(sorted(v for v in values if v))
    return None


def pairs(source: Source, split: str = "train", min_confidence: float = 0.0, label: str | None = None,
          fill: float | None = None):
    """prompt/chosen/rejected, filtered by judge confidence when labels are present.

    `label` ("margin" or "chosen_prob") keeps that column when the data has it; a pair without a label
    gets `fill` (default: margin 0, chosen_prob 1, a plain hard preference).
    """
    if source.pairs_dir is None:
        raise InputError([Problem("--data", None, "", "no preference pairs (prompt/chosen/rejected) in this data")])
    ds = _load(source.pairs_dir, split)
    if ds is None:
        return None
    _require(ds, PAIR_COLUMNS, source.pairs_dir, "preference training")
    if min_confidence > 0 and "chosen_prob" in ds.column_names:
        ds = ds.filter(lambda p: p is None or p >= min_confidence, input_columns="chosen_prob")
    keep = list(PAIR_COLUMNS) + ([label] if label and label in ds.column_names else [])
    ds = ds.select_columns(keep)
    if label in keep:
        default = fill if fill is not None else {"margin": 0.0, "chosen_prob": 1.0}[label]
        ds = ds.map(lambda v: {label: default if v is None else float(v)}, input_columns=label)
    return ds


def messages(source: Source, split: str = "train"):
    """The SFT view as prompt/completion, so the loss covers the assistant's reply only."""
    if source.sft_dir is not None:
        ds = _load(source.sft_dir, split)
        if ds is None:
            return None
        if {"prompt", "completion"} <= set(ds.column_names):
            return ds.select_columns(["prompt", "completion"])
        _require(ds, ["messages"], source.sft_dir, "sft")
        ds = ds.select_columns(["messages"])
    elif source.pairs_dir is not None:  # a bare preference dataset: fine-tune on the chosen answers
        ds = pairs(source, split)
        if ds is None:
            return None
        ds = ds.map(lambda p, c: {"messages": p + c}, input_columns=["prompt", "chosen"],
                    remove_columns=list(PAIR_COLUMNS))
    else:
        raise InputError([Problem("--data", None, "", "no SFT data (messages) in this data")])
    return ds.map(lambda m: {"prompt": m[:-1], "completion": m[-1:]}, input_columns="messages",
                  remove_columns=["messages"])


def kto(source: Source, split: str = "train", min_confidence: float = 0.0):
    """Unpaired rows: each pair gives (prompt, chosen, True) and (prompt, rejected, False)."""
    from trl.data_utils import unpair_preference_dataset

    ds = pairs(source, split, min_confidence)
    return None if ds is None else unpair_preference_dataset(ds)


def prompts(source: Source, split: str = "train"):
    """Distinct prompts (message lists) for rollouts."""
    from datasets import Dataset

    ds = pairs(source, split) if source.pairs_dir is not None else None
    if ds is None and source.sft_dir is not None:
        m = messages(source, split)
        ds = m.rename_column("completion", "_c") if m is not None else None
    if ds is None:
        return None
    seen, rows = set(), []
    for p in ds["prompt"]:
        key = json.dumps(p, sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append({"prompt": p})
    return Dataset.from_list(rows)


def require_rows(ds, what: str):
    if ds is None or len(ds) == 0:
        raise InputError([Problem("--data", None, "", f"no training rows for {what} (empty train split)")])
    return ds
