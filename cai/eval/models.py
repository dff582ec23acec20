"""The three models an eval uses: the baseline's default, a check of all before any work, and a
warning when the judge is one of the models it compares."""

from __future__ import annotations

import json
from pathlib import Path

from cai.backends.loading import precheck, spec_identity
from cai.backends.specs import model_spec
from cai.errors import InputError


def default_baseline(model) -> object:
    """The model a `cai train` output was trained from, as a spec like the trained one's; else embedded."""
    try:
        base = json.loads((Path(model.model) / "train.json").read_text())["config"]["model"]
    except (OSError, ValueError, KeyError, TypeError):
        base = "embedded"
    return model_spec(model.model_dump(), model=base)


def check_models(specs: dict[str, object]) -> None:
    """Fail on any bad model before minutes of generation with the others, and before OUT is made."""
    problems = []
    for flag, spec in specs.items():
        try:
            precheck(spec, flag)
            spec_identity(spec, flag)
        except InputError as exc:
            problems += exc.problems
    if problems:
        raise InputError(problems)


def judge_warnings(made: dict) -> list[str]:
    """The judge scoring its own answers favours them (self-preference): say so, and what to do."""
    fix = "for an independent judge pass --judge-model with a model that is neither --model nor --baseline"
    if made["--judge-model"] is made["--baseline"]:
        return ["the judge is the baseline model (the default when --judge-model is not given): it tends to "
                "prefer its own answers, so the preference leans against the trained model (a win holds despite "
                f"it, a loss may be partly the judge's bias); {fix}"]
    if made["--judge-model"] is made["--model"]:
        return ["the judge is the trained model itself: it tends to prefer its own answers, so the trained "
                f"model's wins and the judge's rates lean in its favour; {fix}"]
    return []
