"""What a training run leaves in DIR: a merged model that from_pretrained loads, the LoRA
adapter in DIR/adapter, metrics.json, a loss/reward plot, and train.json (the exact
config, the base model's identity and the dataset's constitution hash).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from transformers import TrainerCallback

from cai.plots import pyplot, save
from cai.progress import StageProgress
from cai.runfiles import package_versions, write_json

# log keys worth plotting beside the loss, whichever the algorithm logs
PLOT_KEYS = ("rewards/margins", "rewards/accuracies", "reward", "kl", "objective/kl", "accuracy", "margin")


class TrainProgress(TrainerCallback):
    """TRL's training steps on the shared StageProgress bar, with the latest loss beside it.

    PPO (ours, no Trainer) calls start/step/stop directly.
    """

    def __init__(self, console: Console | None = None, label: str = "train"):
        self.progress = StageProgress(console, unit="steps")
        self.label, self.done, self.total, self.started = label, 0, 0, False

    def start(self, total: int) -> None:
        self.total = total
        if not self.started:
            self.progress.__enter__()
            self.progress.add(self.label, total)
            self.progress.start(self.label)
            self.started = True

    def step(self, step: int, logs: dict | None = None) -> None:
        if not self.started:
            self.start(self.total)
        if logs:
            self.progress.note(self.label, "  ".join(
                f"{k.split('/')[-1]} {v:.4g}" for k, v in logs.items()
                if k in ("loss", "reward", "kl") and isinstance(v, (int, float))))
        if step > self.done:
            self.progress.advance(self.label, step - self.done)
            self.done = step

    def stop(self) -> None:
        if self.started:
            self.progress.__exit__(None, None, None)
            self.started = False

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
    plt = pyplot()
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
    save(fig, path)
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
        "plot": "loss.png" if plotted else None, "versions": package_versions(),
    })
    return metrics
