"""What a training run leaves in DIR: a merged model that from_pretrained loads, the LoRA
adapter in DIR/adapter, metrics.json, a loss/reward plot, and train.json (the exact
config, the base model's identity and the dataset's constitution hash).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

from cai.generate import versions, write_json

# log keys worth plotting beside the loss, whichever the algorithm logs
PLOT_KEYS = ("rewards/margins", "rewards/accuracies", "reward", "kl", "objective/kl", "accuracy", "margin")


class RichProgress(TrainerCallback):
    """A rich bar with the latest loss; plain lines every few seconds when not on a terminal."""

    def __init__(self, console: Console | None = None, label: str = "train", interval: float = 5.0):
        self.console = console or Console(stderr=True)
        self.label, self.interval, self.printed = label, interval, 0.0
        self.live = self.console.is_terminal
        self.bar = Progress(TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                            TimeRemainingColumn(), console=self.console, disable=not self.live)
        self.task = None
        self.info = ""
        self.total = 0

    def start(self, total: int) -> None:
        self.total = total
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=total, info="")

    def step(self, step: int, logs: dict | None = None) -> None:
        if logs:
            self.info = "  ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in logs.items()
                                  if k in ("loss", "reward", "kl") and isinstance(v, (int, float)))
        if self.task is None:
            self.start(self.total)
        self.bar.update(self.task, completed=step, info=self.info)
        now = time.monotonic()
        if not self.live and (now - self.printed >= self.interval or step >= self.total):
            self.printed = now
            print(f"{self.label:>8} step {step}/{self.total} {self.info}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        self.bar.stop()

    # TrainerCallback hooks
    def on_train_begin(self, args, state, control, **kw):
        self.start(state.max_steps)

    def on_log(self, args, state, control, logs=None, **kw):
        self.step(state.global_step, logs)

    def on_step_end(self, args, state, control, **kw):
        self.step(state.global_step)

    def on_train_end(self, args, state, control, **kw):
        self.stop()


def save_model(model, tokenizer, out: Path) -> None:
    """Adapter to out/adapter (when LoRA), then the merged full model and tokenizer to out."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        PeftModel = ()
    if isinstance(model, PeftModel):
        model.save_pretrained(out / "adapter")
        tokenizer.save_pretrained(out / "adapter")
        model = model.merge_and_unload()
    if getattr(model, "generation_config", None) is not None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)  # includes the chat template


def plot(history: list[dict], path: Path, title: str) -> bool:
    """Loss (and reward-like series when logged) against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for key in ("loss", *PLOT_KEYS):
        pts = [(h["step"], h[key]) for h in history if key in h and isinstance(h[key], (int, float))]
        if pts:
            series[key] = pts
    if not series:
        return False
    extra = [k for k in series if k != "loss"]
    fig, axes = plt.subplots(1, 1 + bool(extra), figsize=(6 + 5 * bool(extra), 3.6), squeeze=False)
    for ax, keys in zip(axes[0], [["loss"] if "loss" in series else extra[:1], extra]):
        for key in keys:
            xs, ys = zip(*series[key])
            ax.plot(xs, ys, marker="." if len(xs) < 40 else None, label=key)
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_reports(out: Path, config, history: list[dict], summary: dict, base_identity: str,
                  constitution_sha256: str | None, data_path: str | None) -> dict:
    """metrics.json, loss.png and train.json; returns the metrics written."""
    metrics = {"algo": config.algo, **summary, "log_history": history}
    write_json(out / "metrics.json", metrics)
    plotted = plot(history, out / "loss.png", f"cai train {config.algo}")
    write_json(out / "train.json", {
        "algo": config.algo, "config": config.model_dump(mode="json"), "data": data_path,
        "base_model": base_identity, "constitution_sha256": constitution_sha256,
        "plot": "loss.png" if plotted else None, "versions": versions(),
    })
    return metrics
