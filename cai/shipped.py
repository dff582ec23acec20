"""The files cai ships inside the package: constitutions, pipelines, prompt sets, audit probes.

They live in `cai/data/` and are read with importlib.resources, so a wheel
install has them as well as an editable one. The repository's top-level
`constitution/` and `pipelines/` are the copies a person edits (a test keeps
them identical to these); `cai init` writes the same starter project anywhere.

A default (the pipeline `cai generate` runs without an argument, the training
config) is the project's own file when the working directory has one, else
the shipped copy: in a project made by `cai init` the user's edits count.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# What `cai init` writes, relative to the project folder (and to cai/data/).
STARTER = (
    "constitution/harmless.yaml",
    "constitution/helpful-honest.yaml",
    "pipelines/default.yaml",
    "pipelines/train.yaml",
    "pipelines/prompts/red_team.jsonl",
    "pipelines/prompts/benign.jsonl",
    "pipelines/prompts/judge_pairs.jsonl",
)


def path(relative: str) -> Path:
    """A shipped file, e.g. path("pipelines/prompts/red_team.jsonl")."""
    found = files("cai") / "data" / relative
    # Installed packages are directories on disk (pip unpacks wheels), so this is a real path.
    return Path(str(found))


def project_or_shipped(relative: str) -> Path:
    """`relative` in the working directory when it exists there, else the shipped copy."""
    local = Path(relative)
    return local if local.is_file() else path(relative)


def default_pipeline() -> Path:
    return project_or_shipped("pipelines/default.yaml")


def default_train_config() -> Path:
    return project_or_shipped("pipelines/train.yaml")


RED_TEAM = "pipelines/prompts/red_team.jsonl"
BENIGN = "pipelines/prompts/benign.jsonl"
JUDGE_PAIRS = "pipelines/prompts/judge_pairs.jsonl"
HARMLESS = "constitution/harmless.yaml"


def init_project(folder: str | Path, force: bool = False) -> list[Path]:
    """Write the starter project into `folder`; refuse to overwrite a file unless `force`."""
    from cai.errors import InputError, Problem

    folder = Path(folder)
    targets = [folder / rel for rel in STARTER]
    clashes = [t for t in targets if t.exists()]
    if clashes and not force:
        raise InputError([Problem(str(t), None, "", "already exists; `cai init --force` overwrites the starter files")
                          for t in clashes])
    if folder.exists() and not folder.is_dir():
        raise InputError([Problem(str(folder), None, "", "is a file, not a folder")])
    for rel, target in zip(STARTER, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path(rel).read_bytes())
    return targets
