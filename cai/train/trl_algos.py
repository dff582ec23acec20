"""One function per TRL algorithm: build its config and trainer from a TrainConfig. Wraps, never subclasses.

Every builder returns a ready trainer; `cai.train.run` trains it and saves the
outputs the same way for all of them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cai.train import data, soft_labels
from cai.train.config import BETA_DEFAULTS, LR_DEFAULTS, TrainConfig


def on_gpu() -> bool:
    return torch.cuda.is_available()


def common_args(config: TrainConfig, out: Path) -> dict:
    """TrainingArguments shared by every TRL trainer; the CPU defaults that run here."""
    gpu = on_gpu()
    bf16 = gpu and torch.cuda.is_bf16_supported() if config.bf16 is None else config.bf16
    return dict(
        output_dir=str(out / "checkpoints"), save_strategy="no", report_to=config.report_to or "none",
        logging_steps=config.logging_steps,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr or LR_DEFAULTS[config.algo], num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1, seed=config.seed, data_seed=config.seed,
        bf16=bf16, use_cpu=not gpu,
        gradient_checkpointing=gpu if config.gradient_checkpointing is None else config.gradient_checkpointing,
        disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=True,
    )


def beta(config: TrainConfig) -> float:
    return config.beta if config.beta is not None else BETA_DEFAULTS[config.algo]


def lora(config: TrainConfig, task_type: str = "CAUSAL_LM"):
    if not config.lora:
        return None
    from peft import LoraConfig

    c = config.lora_config
    # "all-linear" in peft already leaves out the output layer; never put lm_head here (DPO errors).
    return LoraConfig(r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout, target_modules=c.target_modules,
                      task_type=task_type)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def sft(config, source, model_path, tok, out):
    from trl import SFTConfig, SFTTrainer

    train = data.require_rows(data.messages(source), "sft")
    args = SFTConfig(**common_args(config, out), max_length=config.max_length, completion_only_loss=True)
    return SFTTrainer(model=load_policy(model_path), args=args, train_dataset=train, processing_class=tok,
                      peft_config=lora(config))


def dpo(config, source, model_path, tok, out, **extra):
    """TRL's DPOTrainer; the sigmoid loss trains toward each pair's chosen_prob (--dpo-targets soft) or,
    with --label-smoothing, is conservative DPO (TRL 1.16 applies label_smoothing to robust/exo_pair/aot
    only). Other loss types use TRL's loss with the global label_smoothing."""
    from trl import DPOConfig, DPOTrainer

    ls = config.label_smoothing
    soft = config.loss_type == "sigmoid" and config.dpo_targets == "soft"
    train = data.require_rows(data.pairs(source, min_confidence=config.min_confidence,
                                         label="chosen_prob" if soft else None, fill=1 - ls), "dpo")
    per_row = config.loss_type == "sigmoid" and ("chosen_prob" in train.column_names or ls > 0)
    if per_row and "chosen_prob" not in train.column_names:  # hard targets, smoothed: p = 1 - ε on every row
        train = train.add_column("chosen_prob", [1 - ls] * len(train))
    common = {**common_args(config, out), "remove_unused_columns": not per_row}
    args = DPOConfig(**common, max_length=config.max_length, beta=beta(config), loss_type=[config.loss_type],
                     label_smoothing=ls, **extra)
    trainer = DPOTrainer(model=load_policy(model_path), args=args, train_dataset=train, processing_class=tok,
                         peft_config=lora(config))
    return soft_labels.soft_dpo(trainer) if per_row else trainer


def kto(config, source, model_path, tok, out):
    from trl import KTOConfig, KTOTrainer

    train = data.require_rows(data.kto(source, min_confidence=config.min_confidence), "kto")
    args = KTOConfig(**common_args(config, out), max_length=config.max_length, beta=beta(config))
    return KTOTrainer(model=load_policy(model_path), args=args, train_dataset=train, processing_class=tok,
                      peft_config=lora(config))


def orpo(config, source, model_path, tok, out):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    train = data.require_rows(data.pairs(source, min_confidence=config.min_confidence), "orpo")
    args = ORPOConfig(**{**common_args(config, out), "remove_unused_columns": False}, max_length=config.max_length, beta=beta(config))
    return ORPOTrainer(model=load_policy(model_path), args=args, train_dataset=train, processing_class=tok,
                       peft_config=lora(config))


def simpo(config, source, model_path, tok, out):
    """SimPO = TRL's CPO with loss_type="simpo" and cpo_alpha=0 (no NLL term)."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    train = data.require_rows(data.pairs(source, min_confidence=config.min_confidence), "simpo")
    args = CPOConfig(**{**common_args(config, out), "remove_unused_columns": False}, max_length=config.max_length, beta=beta(config),
                     loss_type="simpo", cpo_alpha=0.0, simpo_gamma=config.simpo_gamma)
    return CPOTrainer(model=load_policy(model_path), args=args, train_dataset=train, processing_class=tok,
                      peft_config=lora(config))


def load_reward_model(path: str, tok=None):
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    # A causal LM has no score head yet: its "missing weights" table is expected, not news.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(level)
    if tok is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model


def reward(config, source, model_path, tok, out):
    """TRL's RewardTrainer. With AI-feedback labels: soft (default) trains toward chosen_prob; margin feeds
    TRL's `margin` column (the label's log-odds); hard ignores the labels. Unlabelled pairs: plain BT."""
    from trl import RewardConfig, RewardTrainer

    label = {"soft": "chosen_prob", "margin": "margin", "hard": None}[config.reward_loss]
    train = data.require_rows(data.pairs(source, min_confidence=config.min_confidence, label=label), "reward")
    soft = "chosen_prob" in train.column_names
    args = RewardConfig(**{**common_args(config, out), "remove_unused_columns": not soft},
                        max_length=config.max_length)
    trainer = RewardTrainer(model=load_reward_model(model_path, tok), args=args, train_dataset=train,
                            processing_class=tok, peft_config=lora(config, "SEQ_CLS"))
    return soft_labels.soft_reward(trainer) if soft else trainer


def grpo(config, source, model_path, tok, out, reward_model: str):
    """TRL's GRPOTrainer on the dataset prompts with the reward model as the reward function."""
    from trl import GRPOConfig, GRPOTrainer

    train = data.require_rows(data.prompts(source), "grpo")
    g = config.grpo
    common = common_args(config, out)
    # GRPO's batch must be a multiple of the generations per prompt.
    common["per_device_train_batch_size"] = max(g.num_generations,
                                                config.batch_size // g.num_generations * g.num_generations)
    args = GRPOConfig(**common, num_generations=g.num_generations, max_completion_length=g.max_completion_length,
                      temperature=g.temperature, beta=beta(config))
    rm_tok = load_tokenizer(reward_model)
    return GRPOTrainer(model=load_policy(model_path), reward_funcs=load_reward_model(reward_model, rm_tok),
                       args=args, train_dataset=train, processing_class=tok,
                       reward_processing_classes=rm_tok, peft_config=lora(config))


BUILDERS = {"sft": sft, "dpo": dpo, "kto": kto, "orpo": orpo, "simpo": simpo, "reward": reward}
