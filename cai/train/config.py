"""Training configuration: pipelines/train.yaml (pydantic, file:line errors), then CLI flags.

Defaults are the ones that run on a 2-core CPU: fp32 (TRL's default bf16 is
~10x slower on CPU), LoRA on, gradient checkpointing off. On a GPU, `bf16`
and `gradient_checkpointing` left at null turn on automatically.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from cai import shipped
from cai.errors import InputError, Problem
from cai.field_errors import StrictModel as _Strict, pydantic_problems
from cai.yamlio import load_model

ALGOS = ("sft", "dpo", "kto", "orpo", "simpo", "reward", "ppo", "grpo")
Algo = Literal["sft", "dpo", "kto", "orpo", "simpo", "reward", "ppo", "grpo"]
DPOLoss = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
                  "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft"]


class LoraConfig(_Strict):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    # all linear layers except the output head (DPO errors on a LoRA lm_head)
    target_modules: list[str] | str = "all-linear"


class PPOSection(_Strict):
    """Our PPO (cai/train/ppo.py). Steps = rollout batches."""

    reward_model: str | None = None  # a `cai train reward` output; trained first when missing
    rollout_batch: int = Field(8, gt=0)  # prompts per rollout
    mini_batch: int = Field(4, gt=0)  # rollouts per optimizer step
    ppo_epochs: int = Field(4, gt=0)  # passes over each rollout batch
    max_new_tokens: int = Field(48, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    kl_coef: float = Field(0.05, ge=0)  # initial KL penalty; --beta sets it too
    target_kl: float | None = Field(None, gt=0)  # adaptive KL controller (Ziegler et al.) when set
    kl_horizon: int = Field(10000, gt=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    clip: float = Field(0.2, gt=0)  # policy ratio clip
    clip_value: float = Field(0.2, gt=0)  # value prediction clip
    vf_coef: float = Field(0.1, ge=0)
    no_eos_penalty: float = Field(1.0, ge=0)  # subtracted from the score of responses that never end
    whiten_rewards: bool = False


class GRPOSection(_Strict):
    num_generations: int = Field(4, ge=2)
    max_completion_length: int = Field(48, gt=0)
    temperature: float = Field(1.0, gt=0)
    reward_model: str | None = None  # trained first when missing, as for PPO


class TrainConfig(_Strict):
    algo: Algo = "dpo"
    data: str | None = None  # a run directory or a dataset folder
    out: str | None = None  # default: DATA/train/ALGO
    model: str = "embedded"  # `embedded`, a checkpoint folder or a hub id
    lora: bool = True
    lora_config: LoraConfig = LoraConfig()
    max_steps: int | None = Field(None, gt=0)  # overrides epochs when set
    epochs: float = Field(1.0, gt=0)
    lr: float | None = Field(None, gt=0)  # null: the algorithm's default (LR_DEFAULTS)
    batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    beta: float | None = Field(None, ge=0)  # DPO/KTO/ORPO/SimPO beta, PPO/GRPO KL coefficient
    max_length: int = Field(256, gt=8)
    seed: int = 0
    loss_type: DPOLoss = "sigmoid"  # DPO loss variant
    # With AI-feedback labels (chosen_prob = p): soft trains toward p (cai/train/soft_labels.py); hard on the
    # plain preference; margin (reward only) is TRL's -logσ(Δ - logit p), which has no finite optimum.
    reward_loss: Literal["soft", "margin", "hard"] = "soft"
    dpo_targets: Literal["soft", "hard"] = "soft"  # soft: sigmoid DPO with per-row label smoothing 1 - p
    # DPO: conservative sigmoid on rows without a label (all rows with hard targets); robust, exo_pair, aot
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, validate_default=True)
    simpo_gamma: float = Field(0.5, ge=0)
    min_confidence: float = Field(0.0, ge=0, le=1)  # drop pairs whose judge chosen_prob is below
    bf16: bool | None = None  # null: on with a GPU, off on CPU
    gradient_checkpointing: bool | None = None  # null: on with a GPU, off on CPU
    report_to: list[str] = []  # e.g. [tensorboard] or [wandb]
    logging_steps: int = Field(1, gt=0)
    eval_reward: bool = True  # reward: held-out pairwise accuracy on the test split
    ppo: PPOSection = PPOSection()
    grpo: GRPOSection = GRPOSection()

    @field_validator("label_smoothing")
    @classmethod
    def _exo_needs_smoothing(cls, value, info):
        if value == 0 and info.data.get("loss_type") == "exo_pair":
            raise ValueError("exo_pair needs a label smoothing above 0 (its paper suggests 1e-3)")
        return value

    def resolved_out(self) -> Path:
        return Path(self.out) if self.out else Path(self.data or ".") / "train" / self.algo


LR_DEFAULTS = {"sft": 1e-4, "dpo": 5e-5, "kto": 5e-5, "orpo": 5e-5, "simpo": 5e-5,
               "reward": 1e-4, "ppo": 1e-5, "grpo": 1e-5}
BETA_DEFAULTS = {"dpo": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0, "ppo": 0.05, "grpo": 0.04}


def load_train_config(path: str | Path | None = None, **overrides) -> TrainConfig:
    """The training YAML (the shipped pipelines/train.yaml when None) with CLI overrides re-validated."""
    path = Path(path) if path else shipped.default_train_config()
    config: TrainConfig = load_model(path, TrainConfig)
    changes = {k: v for k, v in overrides.items() if v is not None}
    data = config.model_dump()
    for key in ("reward_model",):
        if key in changes:
            data["ppo"]["reward_model"] = data["grpo"]["reward_model"] = changes.pop(key)
    try:
        return TrainConfig.model_validate({**data, **changes})
    except ValidationError as exc:
        raise InputError(flag_problems(exc, TrainConfig)) from None


def flag_problems(exc: ValidationError, model_cls) -> list[Problem]:
    """A config built from command-line flags: each pydantic error as `command line: --flag: message`."""
    problems = pydantic_problems(exc, "command line", lambda loc: None, model_cls)
    return [replace(p, field="--" + p.field.split(".")[0].replace("_", "-")) for p in problems]
