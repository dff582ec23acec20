"""The judge's soft labels as training targets (cai/train/soft_labels.py): the reward model and DPO learn a
finite gap logit(chosen_prob) instead of an ever-growing one, and the trainers' losses are the soft-target
formula with each row's own chosen_prob."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from cai.cli import app

PROBS = (0.9, 0.6, 0.5, None)  # None: an SL-CAI pair without a judge label (p = 1)


def _pairs(folder, probs=PROBS, repeat=1):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": [{"role": "user", "content": f"Question {i}: how do I fix my bike?"}],
             "chosen": [{"role": "assistant", "content": f"Check the chain first ({i})."}],
             "rejected": [{"role": "assistant", "content": "No idea, buy a new one."}],
             "chosen_prob": p, "margin": None if p is None else math.log(min(p, 1 - 1e-6) / (1 - min(p, 1 - 1e-6)))}
            for i, p in enumerate(probs * repeat)]
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "train.parquet")
    return folder


def _trainer(algo, data, model, tmp_path, **overrides):
    from cai.train import data as D, trl_algos
    from cai.train.config import load_train_config

    config = load_train_config(algo=algo, data=str(data), out=str(tmp_path / "out"), model=model, lora=False,
                               batch_size=4, max_length=64, **overrides)
    return trl_algos.BUILDERS[algo](config, D.locate(config.data), model, trl_algos.load_tokenizer(model),
                                    tmp_path / "out")


def _descend(loss, steps=3000, lr=0.5):
    """Plain gradient descent on one scalar gap."""
    x = torch.zeros((), requires_grad=True)
    for _ in range(steps):
        (g,) = torch.autograd.grad(loss(x), x)
        x = (x - lr * g).detach().requires_grad_()
    return x.detach().item()


def test_the_soft_loss_has_its_optimum_at_logit_p_where_the_margin_loss_keeps_growing():
    from cai.train.soft_labels import soft_target_loss, soft_term

    p = torch.tensor(0.8)
    soft = _descend(lambda x: soft_target_loss(x, p))
    assert soft == pytest.approx(math.log(4), abs=1e-3)  # logit(0.8) = 1.386
    margin = lambda x: -F.logsigmoid(x - math.log(4))  # TRL's RewardTrainer with margin = logit(p)
    assert _descend(margin, steps=1000) > 5 and _descend(margin, steps=3000) > _descend(margin, steps=1000) + 1
    # The identity the trainers use: TRL's hard loss plus soft_term is the soft-target loss.
    x, ps = torch.linspace(-8, 8, 33), torch.rand(33) * 0.5 + 0.5
    assert torch.allclose(-F.logsigmoid(x).mean() + soft_term(x, ps), soft_target_loss(x, ps).mean(), atol=1e-6)


def _gap(trainer):
    """The reward gap r(chosen) - r(rejected) of the trained model on the first training pair."""
    batch = trainer.data_collator([trainer.train_dataset[0]])
    batch.pop("chosen_prob", None)
    batch.pop("margin", None)
    with torch.no_grad():
        chosen, rejected = trainer.model(**batch).logits.squeeze(-1)
    return float(chosen - rejected)


def test_a_trained_reward_model_learns_the_gap_logit_p_and_the_margin_loss_overshoots(tiny_model, tmp_path):
    data = _pairs(tmp_path / "d", probs=(0.8,), repeat=4)
    gaps = {}
    for loss in ("soft", "margin"):
        trainer = _trainer("reward", data, tiny_model, tmp_path / loss, reward_loss=loss, max_steps=40, lr=6e-3)
        trainer.train()
        gaps[loss] = _gap(trainer)
    print("reward gap after 40 steps on p=0.8 pairs (logit 1.386):", gaps)
    assert gaps["soft"] == pytest.approx(math.log(4), abs=0.25), gaps
    assert gaps["margin"] > math.log(4) + 2, gaps


def test_reward_trainer_loss_is_the_soft_formula_with_each_rows_prob(tiny_model, tmp_path):
    from cai.train.soft_labels import soft_target_loss

    data = _pairs(tmp_path / "d")
    trainer = _trainer("reward", data, tiny_model, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    p = batch["chosen_prob"]
    assert sorted(p.tolist()) == pytest.approx([0.5, 0.6, 0.9, 1.0])  # an unlabelled pair trains as p = 1
    loss = trainer.compute_loss(trainer.model, dict(batch))
    inputs = {k: v for k, v in batch.items() if k != "chosen_prob"}
    chosen, rejected = trainer.model(**inputs).logits.squeeze(-1).chunk(2)
    delta = chosen - rejected
    assert float(loss) == pytest.approx(float(soft_target_loss(delta, p).mean()), abs=1e-5)
    assert float(loss) != pytest.approx(float(soft_target_loss(delta, p.flip(0)).mean()), abs=1e-4)
    # --reward-loss margin is TRL's -logσ(Δ - logit p); hard is plain Bradley-Terry.
    margin = _trainer("reward", data, tiny_model, tmp_path / "m", reward_loss="margin")
    assert "chosen_prob" not in margin.train_dataset.column_names and "margin" in margin.train_dataset.column_names
    hard = _trainer("reward", data, tiny_model, tmp_path / "h", reward_loss="hard")
    assert {"chosen_prob", "margin"}.isdisjoint(hard.train_dataset.column_names)


def _seq_logps(model, batch):
    """Completion log-probs per sequence, computed from full logits (not TRL's fused head)."""
    ids, completion = batch["input_ids"], batch["completion_mask"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (logp * completion[:, 1:]).sum(1).chunk(2)


def _dpo_loss(trainer, batch):
    """The trainer's loss on a batch, and βh per row from an independent computation."""
    torch.manual_seed(1)
    with torch.no_grad():  # move the policy off the reference so that h != 0
        for param in trainer.model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    loss = trainer.compute_loss(trainer.model, dict(batch))
    pc, pr = _seq_logps(trainer.model, batch)
    rc, rr = _seq_logps(trainer.ref_model, batch)
    return loss.item(), trainer.beta * ((pc - rc) - (pr - rr))


def test_dpo_loss_is_conservative_dpo_with_each_rows_prob(tiny_model, tmp_path):
    from cai.train.soft_labels import soft_target_loss

    data = _pairs(tmp_path / "d")
    trainer = _trainer("dpo", data, tiny_model, tmp_path, beta=1.0)
    batch = next(iter(trainer.get_train_dataloader()))
    p = batch["chosen_prob"]
    loss, x = _dpo_loss(trainer, batch)
    print("beta*h per row:", x.tolist(), "p:", p.tolist(), "loss:", loss)
    assert x.abs().max() > 0.3  # the rows' gaps differ from 0, so p matters
    assert loss == pytest.approx(float(soft_target_loss(x, p).mean()), abs=1e-4)
    assert loss != pytest.approx(float(soft_target_loss(x, p.flip(0)).mean()), abs=1e-3)
    assert loss != pytest.approx(float(-F.logsigmoid(x).mean()), abs=1e-3)  # not the hard loss


def test_dpo_label_smoothing_reaches_sigmoid_and_robust(tiny_model, tmp_path):
    from cai.train.soft_labels import soft_target_loss

    data = _pairs(tmp_path / "d")
    eps = 0.2
    losses = {}
    for name, kw in {"hard": {"dpo_targets": "hard"},
                     "cdpo": {"dpo_targets": "hard", "label_smoothing": eps},
                     "robust": {"loss_type": "robust", "label_smoothing": eps}}.items():
        trainer = _trainer("dpo", data, tiny_model, tmp_path / name, beta=1.0, **kw)
        batch = next(iter(trainer.get_train_dataloader()))
        losses[name], x = _dpo_loss(trainer, batch)  # the same seed: the same policy, batch order aside
        formula = {"hard": -F.logsigmoid(x),
                   "cdpo": soft_target_loss(x, torch.full_like(x, 1 - eps)),
                   "robust": (-(1 - eps) * F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1 - 2 * eps)}[name]
        assert losses[name] == pytest.approx(float(formula.mean()), abs=1e-4), name
    assert "chosen_prob" not in batch  # robust: TRL's own loss, a global smoothing
    assert losses["robust"] != pytest.approx(losses["hard"], abs=1e-3)
    assert losses["cdpo"] != pytest.approx(losses["hard"], abs=1e-3)


@pytest.mark.parametrize("args, expect", [
    (["--reward-loss", "bogus"], "--reward-loss: must be one of 'soft', 'margin' or 'hard'"),
    (["--dpo-targets", "maybe"], "--dpo-targets: must be one of 'soft' or 'hard'"),
    (["--loss-type", "exo_pair"], "--label-smoothing: exo_pair needs a label smoothing above 0"),
    (["--label-smoothing", "0.5"], "--label-smoothing: must be less than 0.5"),
])
def test_bad_soft_label_flags_exit_2_in_one_line(args, expect, tmp_path):
    result = CliRunner().invoke(app, ["train", "dpo", "--data", str(tmp_path), *args])
    assert result.exit_code == 2 and expect in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
