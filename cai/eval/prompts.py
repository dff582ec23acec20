"""Which prompts `cai eval` answers: a pipeline's held-out prompts, or --prompts files whole.

The pipeline's `holdout` is one setting for both jobs: `cai generate` leaves those prompts
out (cai.prompts.load_prompts), eval answers exactly them, so a trained model is never
scored on prompts its training data was generated from.
"""

from __future__ import annotations

from pathlib import Path

from cai import shipped
from cai.errors import InputError, Problem


def kind_of(example: dict) -> str:
    """red_team or benign: by the shipped id prefixes, else the source file's name, else the category."""
    if example["id"].startswith("bn-") or "benign" in (example.get("source") or "").lower():
        return "benign"
    if example["id"].startswith("rt-") or "red" in (example.get("source") or "").lower():
        return "red_team"
    return "benign" if (example.get("category") or "").lower() in ("benign", "looks-sensitive") else "red_team"


def prompt_set(cfg) -> dict:
    """Where the prompts come from: --prompts files whole, else the held-out share of a pipeline's
    sources, the same `holdout` setting `cai generate` leaves them out by."""
    from cai.config import load_pipeline

    if cfg.prompts and cfg.pipeline:
        raise InputError([Problem("--pipeline", None, "", "give --prompts (files used whole) or --pipeline "
                                  "(its held-out prompts), not both")])
    if cfg.prompts:
        return {"files": cfg.prompts}
    path = Path(cfg.pipeline) if cfg.pipeline else shipped.default_pipeline()
    pipeline = load_pipeline(path)
    if not pipeline.holdout:
        raise InputError([Problem(str(path), None, "holdout", "is 0: the pipeline keeps no prompts out of "
                                  "generation to evaluate on; set e.g. `holdout: 0.3` or pass --prompts")])
    return {"pipeline": str(path), "holdout": pipeline.holdout, "sources": pipeline.prompts,
            "constitution": pipeline.constitution}  # its comparison questions judge the answers


def select_prompts(cfg) -> tuple[dict[str, list[dict]], dict]:
    """The prompts by kind (red_team, benign), each kind cut to cfg.limit, and where they came from."""
    from cai.config import PromptSource
    from cai.prompts import load_prompts

    chosen = prompt_set(cfg)
    if "files" in chosen:
        examples = load_prompts([PromptSource(path=p) for p in chosen["files"]])
    else:
        examples = load_prompts(chosen["sources"], holdout=chosen["holdout"], held_out=True)
    by_kind: dict[str, list[dict]] = {"red_team": [], "benign": []}
    for e in examples:
        by_kind[kind_of(e)].append(e)
    if cfg.limit:
        by_kind = {k: v[:cfg.limit] for k, v in by_kind.items()}
    if not any(by_kind.values()):
        raise InputError([Problem("--prompts", None, "", "no prompts to evaluate")])
    return by_kind, {k: v for k, v in chosen.items() if k != "sources"}


def load_eval_prompts(cfg) -> dict[str, list[dict]]:
    return select_prompts(cfg)[0]
