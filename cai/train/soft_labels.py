"""The judge's soft labels as training targets (Constitutional AI trains its preference model on them).

An AI-feedback pair carries `chosen_prob` = p, the judge's probability that chosen is better. With x the
model's preference score for chosen over rejected (reward model: r(chosen) - r(rejected); DPO: beta times
the implicit reward gap), the soft-target loss is the cross-entropy against p:

    -(p·logσ(x) + (1-p)·logσ(-x))  =  -logσ(x) + (1-p)·x          (as logσ(-x) = logσ(x) - x)

Its gradient σ(x) - p vanishes at x = logit(p): a 0.52 pair asks for a gap near 0, a 0.99 pair for 4.6,
where the hard loss -logσ(x) (and TRL's margin loss -logσ(x - logit p)) keeps pushing the gap up forever.
For DPO it is conservative DPO with a per-row label smoothing ε = 1 - p. Rows without a label get p = 1.

TRL computes the hard loss -logσ(x) already, with its metrics; its trainers take no per-row targets, so
each function below installs one compute_loss on one trainer instance (no subclass) that runs TRL's own
and adds the mean of (1-p)·x. The labels reach it through the collator as a `chosen_prob` tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COLUMN = "chosen_prob"


def soft_target_loss(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Per-row -(p·logσ(x) + (1-p)·logσ(-x)): the reference formula the trainers' losses equal."""
    return -(p * F.logsigmoid(x) + (1 - p) * F.logsigmoid(-x))


def soft_term(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """What turns the mean hard loss mean(-logσ(x)) into the mean soft-target loss."""
    return ((1 - p.to(x.device, torch.float32)) * x.float()).mean()


def _carry_labels(trainer) -> None:
    """TRL's preference collators pass only their own keys; add each row's label as a tensor.

    The builder also sets remove_unused_columns=False so the column reaches the collator at all.
    """
    collate = trainer.data_collator

    def with_labels(examples):
        batch = collate(examples)
        batch[COLUMN] = torch.tensor([float(e[COLUMN]) for e in examples], dtype=torch.float32)
        return batch

    trainer.data_collator = with_labels


def soft_reward(trainer):
    """RewardTrainer: TRL's -logσ(r_c - r_r) plus (1-p)·(r_c - r_r), from the rewards TRL's forward returns."""
    _carry_labels(trainer)
    trl_loss = trainer.compute_loss

    def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        p = inputs.pop(COLUMN)
        loss, outputs = trl_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        loss = loss + soft_term(chosen - rejected, p)
        return (loss, outputs) if return_outputs else loss

    trainer.compute_loss = compute_loss
    return trainer


def soft_dpo(trainer):
    """DPOTrainer (sigmoid loss): TRL's -logσ(βh) plus (1-p)·βh, h the implicit reward gap.

    TRL's loss code keeps h to itself, so h is rebuilt from its two parts: the reference log-probs are
    computed here with TRL's own compute_ref_log_probs and handed in as precomputed ones (so TRL does not
    compute them again), and the policy's per-row log-probs are read from its one forward by a hook,
    summed as TRL sums them (log_probs are zero off the completion; no ld_alpha).
    """
    # h as rebuilt below is TRL's only for plain DPO (the defaults we build with)
    assert trainer.loss_types == ["sigmoid"] and trainer.ld_alpha is None and trainer.f_divergence_type == "reverse_kl"
    _carry_labels(trainer)
    trl_loss = trainer.compute_loss
    trainer.precompute_ref_logps = True  # read per batch from inputs["ref_*_logps"], which we fill

    def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        p = inputs.pop(COLUMN)
        if "ref_chosen_logps" not in inputs:
            ref = trainer.compute_ref_log_probs(trainer.ref_model or trainer.model, inputs)  # as TRL precomputes
            inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = ref
        seen = []
        hook = model.register_forward_hook(lambda module, args, out: seen.append(out.log_probs))
        try:
            result = trl_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        finally:
            hook.remove()
        seq_len = inputs["completion_mask"].size(1) - 1
        chosen, rejected = seen[0][:, -seq_len:].sum(dim=1).chunk(2)
        h = (chosen - inputs["ref_chosen_logps"]) - (rejected - inputs["ref_rejected_logps"])
        extra = soft_term(trainer.beta * h, p)
        return (result[0] + extra, result[1]) if return_outputs else result + extra

    trainer.compute_loss = compute_loss
    return trainer
