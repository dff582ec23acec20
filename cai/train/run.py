"""`cai train ALGO`: TRL's trainers (sft, dpo, kto, orpo, simpo, reward, grpo) and our PPO, one output layout.

    from cai.train.run import train
    train(load_train_config(algo="dpo", data="outputs/default")) -> metrics dict

DIR gets the merged model (+ DIR/adapter with LoRA), metrics.json, loss.png and
train.json (config, base model identity, constitution hash).
"""

from __future__ import annotations

import time
from pathlib import Path

from cai.errors import InputError, Problem
from cai.train.config import TrainConfig


def _resolve_model(spec: str, flag: str = "--model"):
    """A missing, incomplete or unreachable model is one line and exit 2, before anything loads."""
    from cai.models import ModelNotFound, resolve

    try:
        return resolve(spec)
    except ModelNotFound as exc:
        raise InputError([Problem(flag, None, "", f"{spec}: {exc}")]) from None


def _given_reward_model(config: TrainConfig) -> str | None:
    """PPO/GRPO's --reward-model, checked like --model (a folder with config, tokenizer and weights)."""
    given = {"ppo": config.ppo, "grpo": config.grpo}.get(config.algo)
    given = given.reward_model if given else None
    if given:
        if not Path(given).expanduser().is_dir():
            raise InputError([Problem("--reward-model", None, "", f"{given}: not a checkpoint folder")])
        _resolve_model(given, "--reward-model")
    return given


def _reward_model_for(config: TrainConfig, out: Path, console) -> str:
    """The reward model for PPO/GRPO: the one given, or one trained first from the same data."""
    given = _given_reward_model(config)
    if given:
        return given
    rm_out = out / "reward_model"
    if not (rm_out / "config.json").is_file():
        if console is not None:
            console.print(f"no --reward-model: training one first into {rm_out}")
        train(config.model_copy(update={"algo": "reward", "out": str(rm_out), "lr": None, "beta": None}),
              console=console)
    return str(rm_out)


def train(config: TrainConfig, console=None, reward_fn=None, callbacks=()) -> dict:
    """Train ALGO on the data and write DIR; returns the metrics (also in DIR/metrics.json).

    `reward_fn(prompts, completions) -> scores` replaces the reward model in PPO (tests, scripted rewards);
    `callbacks` are extra transformers TrainerCallbacks for the TRL trainers (the benchmark times steps with one).
    """
    import datasets
    from transformers.utils import logging as hf_logging

    from cai.train import data, outputs, trl_algos

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    source = data.locate(config.data)
    ref = _resolve_model(config.model)
    if reward_fn is None:
        _given_reward_model(config)  # a bad one fails now, not after the tokenizer and policy load
    out = config.resolved_out()
    tok = trl_algos.load_tokenizer(ref.path)
    progress = outputs.TrainProgress(console, label=config.algo)
    extra: dict = {}
    started = time.time()
    if config.algo == "ppo":
        from cai.train import ppo

        reward_path = None if reward_fn else _reward_model_for(config, out, console)
        model, history = ppo.train_ppo(config, source, ref.path, tok, reward_fn or reward_path, progress)
        if reward_path:
            extra["reward_model"] = reward_path
    else:
        if config.algo == "grpo":
            reward_path = _reward_model_for(config, out, console)
            trainer = trl_algos.grpo(config, source, ref.path, tok, out, reward_path)
            extra["reward_model"] = reward_path
        else:
            trainer = trl_algos.BUILDERS[config.algo](config, source, ref.path, tok, out)
        if config.algo == "dpo" and config.dpo_targets == "soft" and config.loss_type != "sigmoid" and console:
            console.print(f"note: soft targets (chosen_prob) apply to --loss-type sigmoid; {config.loss_type} "
                          "trains on the pairs as hard preferences (with --label-smoothing if set)")
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # our progress shows the loss instead of raw dicts
        trainer.add_callback(progress)
        for callback in callbacks:
            trainer.add_callback(callback)
        trainer.train()
        model, history = trainer.model, trainer.state.log_history
        if config.algo == "reward" and config.eval_reward:
            test = data.pairs(source, "test")
            if test is not None and len(test):
                extra["heldout"] = rewards_accuracy(model, tok, test, config.max_length)
    seconds = time.time() - started
    steps = max([h.get("step", 0) for h in history] + [0])
    losses = [h["loss"] for h in history if "loss" in h]
    summary = {"steps": steps, "train_seconds": round(seconds, 3),
               "seconds_per_step": round(seconds / steps, 4) if steps else None,
               "final_loss": losses[-1] if losses else None, **extra}
    outputs.save_model(model, tok, out)
    try:  # the trainers' output_dir stays empty (save_strategy "no"); do not leave it behind
        (out / "checkpoints").rmdir()
    except OSError:
        pass
    return outputs.write_reports(out, config, history, summary, ref.identity, data.constitution_hash(source),
                                 str(Path(config.data).resolve()) if config.data else None)


def rewards_accuracy(model, tok, pairs, max_length):
    from cai.train.rewards import pair_accuracy

    return pair_accuracy(model, tok, pairs, max_length)


def describe(config: TrainConfig, metrics: dict) -> str:
    loss = metrics.get("final_loss")
    line = (f"{config.algo}: {metrics['steps']} steps in {metrics['train_seconds']:.0f}s, final loss "
            f"{'n/a' if loss is None else f'{loss:.4f}'}")
    if metrics.get("heldout"):
        h = metrics["heldout"]
        line += f"; held-out pairwise accuracy {h['accuracy']:.3f} (n={h['n']}, 95% CI {h['ci95'][0]:.2f}-{h['ci95'][1]:.2f})"
    return line
