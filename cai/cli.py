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
    feedback: Optional[bool] = typer.Option(None, "--feedback/--no-feedback", help="AI feedback (RL-CAI): a judge compares answer pairs per principle, both orders, and orients each pair by its soft label (pipeline `feedback:` sets pairs, k principles, chain-of-thought, tie threshold)."),
    judge_model: Optional[str] = typer.Option(None, help="Judge model for --feedback (default: the policy model itself, which risks self-preference)."),
    judge_backend: Optional[str] = typer.Option(None, help="Backend of the judge model (default: the policy's)."),
    judge_base_url: Optional[str] = typer.Option(None, help="openai judge backend: the server's base URL."),
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
            feedback=feedback, judge_model=judge_model, judge_backend=judge_backend, judge_base_url=judge_base_url,
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
    if "comparisons" in c:
        err.print(f"AI feedback: {c['comparisons']} judged pairs, {c['ties']} ties, {c['low_confidence']} below "
                  f"min_confidence, {c['unusable']} unusable ({c['judge_malformed']} malformed judge outputs); "
                  f"{c['position_consistent']} consistent across both orders", soft_wrap=True)
    for warning in summary.get("warnings", []):
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)
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
def train(
    algo: str = typer.Argument(..., help="sft | dpo | kto | orpo | simpo | reward | ppo | grpo."),
    data: Path = typer.Option(..., "--data", help="Run directory from `cai generate` (RUN/dataset, RUN/sft) or a dataset folder with {train,test}.parquet."),
    out: Optional[Path] = typer.Option(None, help="Output directory for the trained model (default: DATA/train/ALGO)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Training YAML (default: pipelines/train.yaml); flags override it."),
    model: Optional[str] = typer.Option(None, help="Starting model: `embedded` (default, the shipped SmolLM2-135M-Instruct as a plain checkpoint), a checkpoint folder or a hub id."),
    lora: Optional[bool] = typer.Option(None, "--lora/--full", help="LoRA adapters (default; merged into DIR, adapter kept in DIR/adapter) or full fine-tuning."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps (PPO: rollout batches); overrides --epochs."),
    epochs: Optional[float] = typer.Option(None, help="Passes over the training split."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default depends on ALGO, e.g. 5e-5 for DPO)."),
    batch_size: Optional[int] = typer.Option(None, help="Rows per device step."),
    beta: Optional[float] = typer.Option(None, help="DPO/KTO/ORPO/SimPO beta; PPO/GRPO KL coefficient."),
    max_length: Optional[int] = typer.Option(None, help="Max tokens per sequence (prompt + answer)."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    loss_type: Optional[str] = typer.Option(None, help="DPO loss variant: sigmoid, ipo, hinge, robust, ..."),
    min_confidence: Optional[float] = typer.Option(None, help="With AI-feedback labels: drop pairs whose judge chosen_prob is below this."),
    reward_model: Optional[str] = typer.Option(None, help="ppo/grpo: a `cai train reward` output; trained first from the same data when missing."),
    report_to: Optional[List[str]] = typer.Option(None, help="Also log to tensorboard or wandb (TRL's report_to); repeatable."),
):
    """Train a model on a generated dataset with TRL (sft, dpo, kto, orpo, simpo, reward, grpo) or our PPO."""
    from cai.train.config import ALGOS, load_train_config

    try:
        if algo not in ALGOS:
            raise InputError([Problem("ALGO", None, "", f"unknown algorithm {algo!r} (one of {', '.join(ALGOS)})")])
        cfg = load_train_config(config, algo=algo, data=str(data), out=str(out) if out else None, model=model,
                                lora=lora, max_steps=max_steps, epochs=epochs, lr=lr, batch_size=batch_size,
                                beta=beta, max_length=max_length, seed=seed, loss_type=loss_type,
                                min_confidence=min_confidence, reward_model=reward_model, report_to=report_to)
        from cai.train import train as run

        metrics = run(cfg, console=err)
    except BaseException as exc:  # noqa: BLE001 - every failure maps to an exit code
        if isinstance(exc, typer.Exit):
            raise
        _fail(exc)
    loss = metrics.get("final_loss")
    extra = ""
    if metrics.get("heldout"):
        h = metrics["heldout"]
        extra = f"; held-out pairwise accuracy {h['accuracy']:.3f} (n={h['n']}, 95% CI {h['ci95'][0]:.2f}-{h['ci95'][1]:.2f})"
    err.print(f"{cfg.algo}: {metrics['steps']} steps in {metrics['train_seconds']:.0f}s, final loss "
              f"{loss if loss is None else f'{loss:.4f}'}{extra}")
    print(cfg.resolved_out())


@app.command("eval")
def eval_(
    model: str = typer.Option(..., help="The trained model folder (a `cai train` output)."),
    baseline: Optional[str] = typer.Option(None, help="Model to compare with (default: the trained model's base model from its train.json, else `embedded`)."),
    out: Path = typer.Option(..., help="Output folder for eval.json and report.html."),
    prompts: Optional[List[str]] = typer.Option(None, help="Prompt files (red-team ids rt-..., benign bn-... or a `category`); default: the shipped sets' test split."),
    judge_model: Optional[str] = typer.Option(None, help="Judge model (default: the baseline model)."),
    constitution: Optional[Path] = typer.Option(None, help="Constitution whose comparison questions the judge asks (default: constitution/harmless.yaml)."),
    limit: Optional[int] = typer.Option(None, help="At most this many prompts of each kind (red-team, benign)."),
    max_new_tokens: int = typer.Option(128, help="Tokens per generated answer."),
    principles: int = typer.Option(2, help="Principles the judge samples per comparison."),
    seed: int = typer.Option(0, help="Seed for the judge's principle draw and bootstrap intervals."),
):
    """Compare a trained model with its baseline: harmlessness preference, benign refusals, harmful compliance, length."""
    from cai.progress import StageProgress
    from cai.train.eval import EvalConfig, run_eval

    try:
        cfg = EvalConfig(model=model, baseline=baseline, out=str(out), prompts=prompts or [], judge_model=judge_model,
                         constitution=str(constitution) if constitution else None, limit=limit,
                         max_new_tokens=max_new_tokens, principles=principles, seed=seed)
        with StageProgress(err) as progress:
            result = run_eval(cfg, console=err, progress=progress)
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, typer.Exit):
            raise
        _fail(exc)
    for line in result["summary_lines"]:
        err.print(line, soft_wrap=True)
    print(Path(out) / "report.html")


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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
