"""`cai validate`: tell a constitution, a pipeline and a prompt file apart, and check each."""

from __future__ import annotations

from pathlib import Path

from cai.config import PromptSource, load_pipeline
from cai.constitution import load_constitution
from cai.errors import InputError, Problem
from cai.prompts import load_prompts
from cai.yamlio import load_yaml

PROMPT_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet"}
PIPELINE_KEYS = {"prompts", "constitution", "policy", "judge", "backend", "rounds"}


def check_path(path: Path) -> list[Problem]:
    """Every problem found in the file (and, for a pipeline, in what it points to)."""
    try:
        if path.suffix.lower() in PROMPT_SUFFIXES:
            load_prompts([PromptSource(path=str(path))])
            return []
        data, _ = load_yaml(path)
        if isinstance(data, dict) and "principles" not in data and PIPELINE_KEYS & data.keys():
            from cai.generate import check_inputs

            check_inputs(load_pipeline(path))
        else:
            load_constitution(path)
    except InputError as exc:
        return exc.problems
    return []
