"""The `cai` command line: parse, load, call one function, render. Exit 0 ok, 1 failure, 2 bad input."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from cai.errors import InputError, Problem

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Constitutional AI data engine: constitution + prompts -> critiqued, revised, "
         "preference-labelled datasets for TRL.",
)
err = Console(stderr=True, highlight=False)
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    _state["debug"] = debug


def _fail(exc: BaseException) -> None:
    if _state["debug"]:
        raise exc
    if isinstance(exc, InputError):
        for problem in exc.problems:
            err.print(f"[red]error:[/red] {escape(str(problem))}", soft_wrap=True)
        raise typer.Exit(2)
    if isinstance(exc, KeyboardInterrupt):
        err.print("interrupted: finished chunks are saved; run the same command again to resume")
        raise typer.Exit(130)
    err.print(f"[red]error:[/red] {type(exc).__name__}: {escape(str(exc))}  (run with --debug for the traceback)",
              soft_wrap=True)
    raise typer.Exit(1)


@app.command()
def generate(
    pipeline: Optional[Path] = typer.Argument(None, help="Pipeline YAML (default: pipelines/default.yaml)."),
    constitution: Optional[Path] = typer.Option(None, help="Constitution YAML, instead of the pipeline's."),
    prompts: Optional[List[str]] = typer.Option(None, help="Prompt file (.jsonl/.json/.csv/.parquet), dataset folder or hf:NAME; repeat for several."),
    model: Optional[str] = typer.Option(None, help="`embedded` (SmolLM2-135M-Instruct, shipped), a local checkpoint folder or a hub id."),
    backend: Optional[str] = typer.Option(None, help="Backend that runs the model: transformers (in-process), openai (any OpenAI-compatible server) or scripted (instant stand-in)."),
    base_url: Optional[str] = typer.Option(None, help="openai backend: the server's base URL, e.g. http://127.0.0.1:8000/v1. The key is read from the variable named by the pipeline's api_key_env (default OPENAI_API_KEY)."),
    limit: Optional[int] = typer.Option(None, help="Use at most this many prompts (taken round-robin across prompt files)."),
    rounds: Optional[int] = typer.Option(None, help="Critique -> revision rounds per prompt."),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per forward pass in the transformers backend."),
    seed: Optional[int] = typer.Option(None, help="Seed for principle sampling and sampled generation."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default: outputs/<pipeline name>). Re-running resumes."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the model-call cache."),
):
    """Respond, critique and revise each prompt against sampled principles (SL-CAI); write records and a TRL-ready dataset."""
    from cai.config import load_pipeline
    from cai.generate import generate as run
    from cai.progress import StageProgress

    try:
        config = load_pipeline(
            pipeline, constitution=str(constitution) if constitution else None, prompts=prompts,
            model=model, backend=backend, base_url=base_url, limit=limit, rounds=rounds, batch_size=batch_size,
            seed=seed, out=str(out) if out else None, cache=False if no_cache else None,
        )
        with StageProgress(err) as progress:
            summary = run(config, str(pipeline) if pipeline else None, progress=progress)
    except BaseException as exc:  # noqa: BLE001 - every failure maps to an exit code
        if isinstance(exc, typer.Exit):
            raise
        _fail(exc)
    c = summary["counts"]
    flagged = ", ".join(f"{k} {v}" for k, v in c["flagged"].items()) or "none"
    err.print(f"{c['records']} records, {c['pairs']} pairs (flagged: {flagged}); "
              f"{c['model_calls']} model calls, {c['cache_hits']} cache hits, {c['resumed']} resumed")
    if not c["pairs"]:
        err.print("[yellow]warning:[/yellow] no pairs passed the quality gates; see records/ for the reasons")
    print(summary["dataset_path"])
    if c["failed"]:
        first = c["errors"][0]
        err.print(f"[red]error:[/red] {c['failed']} prompts failed and are left for the next run "
                  f"(first: {first['id']} at {first['stage']}: {escape(first['error'])}); "
                  "run the same command again to retry them", soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def validate(paths: List[Path] = typer.Argument(..., help="Constitution or pipeline YAML files (or prompt files).")):
    """Check constitutions, pipelines and prompt files; print one line per problem (FILE:LINE: field: message)."""
    from cai.validate import check_path

    problems: list[Problem] = []
    for path in paths:
        found = check_path(path)
        problems += found
        if not found:
            err.print(f"ok: {path}")
    if problems:
        _fail(InputError(problems))


@app.command()
def push(
    run_dir: Path = typer.Argument(..., help="Run directory made by `cai generate` (holds run.json and dataset/)."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub dataset repo, ORG/NAME; created if missing, updated if it exists."),
    private: bool = typer.Option(False, "--private", help="Create the repo private (an existing repo keeps its visibility)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to commit to (created from main if missing); default main."),
    dry_run: Optional[Path] = typer.Option(None, "--dry-run", help="Write exactly the files that would be uploaded into this folder, offline; push nothing."),
    license: str = typer.Option("apache-2.0", "--license", help="License id for the card's front matter (a Hub license id, or `other`)."),
):
    """Publish the run's dataset to the Hugging Face Hub with its card, constitution and run.json.

    The token is huggingface_hub's own: HF_TOKEN or `hf auth login`; it is never written anywhere."""
    from cai import hub

    try:
        if dry_run is not None:
            files = hub.dry_run(run_dir, dry_run, repo_id, license)
            err.print(f"dry run: {len(files)} files written to {dry_run} (nothing uploaded)")
            print(dry_run)
            return
        done = hub.push(run_dir, repo_id, private=private, revision=revision, license=license)
    except BaseException as exc:  # noqa: BLE001 - every failure maps to an exit code
        if isinstance(exc, typer.Exit):
            raise
        if isinstance(exc, hub.PushError) and not _state["debug"]:
            err.print(f"[red]error:[/red] push failed: {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(1)
        _fail(exc)
    deleted = f", {len(done['deleted'])} stale files removed" if done["deleted"] else ""
    err.print(f"pushed {len(done['files'])} files to {repo_id}{deleted}")
    print(done["commit_url"])


@app.command()
def diff(
    run_dir: Path = typer.Argument(..., help="Run directory with two or more dataset versions under versions/."),
    from_: Optional[str] = typer.Option(None, "--from", help="Constitution sha256 (prefix) of the older version; default: the most recent other one."),
    to: Optional[str] = typer.Option(None, "--to", help="Constitution sha256 (prefix) of the newer version; default: the run's current one."),
    samples: int = typer.Option(3, "--samples", min=0, help="How many changed rows to show before/after."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON instead of text."),
):
    """What a constitution edit changed in the dataset: rows, principle usage, flags, sample revisions."""
    import json as _json

    from cai.diff import compare, render

    try:
        report = compare(run_dir, from_, to, samples)
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, typer.Exit):
            raise
        _fail(exc)
    print(_json.dumps(report, indent=2, ensure_ascii=False) if as_json else render(report))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
