"""Our PPO (cai/train/ppo.py): GAE by hand, and learning on a scripted reward with bounded KL."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import write_pipeline


def test_gae_matches_hand_computation():
    from cai.train.ppo import gae

    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.2, 0.1, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the 4th token is past the end: ignored
    adv, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    d2 = 1.0 - 0.1
    d1 = 0.0 + 0.1 - 0.2
    d0 = 0.0 + 0.2 - 0.5
    expected = [d0 + 0.95 * (d1 + 0.95 * d2), d1 + 0.95 * d2, d2, 0.0]
    assert adv[0].tolist() == pytest.approx(expected)
    assert returns[0, :3].tolist() == pytest.approx([e + v for e, v in zip(expected, [0.5, 0.2, 0.1])])


@pytest.fixture(scope="module")
def two_class_model(tmp_path_factory, tiny_model) -> tuple[str, int]:
    """A tiny random Llama whose embeddings carry one feature separating the two halves of the
    vocabulary, so one direction of the hidden state moves probability between them."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model)
    config = LlamaConfig.from_pretrained(tiny_model)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    half = len(tok) // 2
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[:, 0] = torch.where(torch.arange(len(tok)) < half, 0.1, -0.1)
    out = tmp_path_factory.mktemp("two-class")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out), half


def test_ppo_raises_a_scripted_reward_with_bounded_kl(two_class_model, tmp_path):
    """Reward = share of the response's tokens in the lower half of the vocabulary (about 0.5 at start)."""
    from transformers import AutoTokenizer

    from cai.config import load_pipeline
    from cai.generate import generate
    from cai.train.run import train
    from cai.train.config import load_train_config

    path, half = two_class_model
    generate(load_pipeline(write_pipeline(tmp_path / "gen", n_prompts=16, rounds=1)))
    tok = AutoTokenizer.from_pretrained(path)

    def reward(prompts, texts):
        ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
        return [sum(i < half for i in row) / max(1, len(row)) for row in ids]

    config = load_train_config(algo="ppo", data=str(tmp_path / "gen" / "out"), out=str(tmp_path / "ppo"),
                               model=path, lora=False, max_steps=24, lr=3e-3, seed=0)
    config.ppo = config.ppo.model_copy(update={"rollout_batch": 16, "mini_batch": 8, "ppo_epochs": 2,
                                               "max_new_tokens": 12})
    metrics = train(config, reward_fn=reward)
    h = metrics["log_history"]
    first = sum(r["reward"] for r in h[:6]) / 6
    last = sum(r["reward"] for r in h[-6:]) / 6
    print(f"PPO scripted reward: first 6 steps {first:.3f}, last 6 {last:.3f}, "
          f"max KL {max(r['kl'] for r in h):.3f}")
    assert last > first + 0.08, (first, last)
    assert max(r["kl"] for r in h) < 5.0  # nats per response, summed over tokens
    for key in ("entropy", "clipfrac", "value_loss", "kl_coef", "response_length"):
        assert all(key in r for r in h)
    saved = json.loads((tmp_path / "ppo" / "metrics.json").read_text())
    assert saved["steps"] == 24 and (tmp_path / "ppo" / "loss.png").is_file()


def test_reward_whitening_keeps_the_mean_so_length_is_not_paid_per_token():
    from cai.train.ppo import _whiten

    rewards = torch.tensor([[0.5, 0.5, 2.0, 9.9], [1.0, 3.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    kept = _whiten(rewards, mask, shift_mean=False)
    mean = (rewards * mask).sum() / mask.sum()
    assert ((kept * mask).sum() / mask.sum()).item() == pytest.approx(mean.item())
    assert ((((kept - mean) * mask) ** 2).sum() / mask.sum()).item() == pytest.approx(1.0, rel=1e-4)
    assert kept[0, 3] == 0 and kept[1, 2:].abs().sum() == 0
    assert ((_whiten(rewards, mask) * mask).sum() / mask.sum()).item() == pytest.approx(0.0, abs=1e-6)


def test_tokens_past_the_end_cannot_make_the_ratio_inf_or_the_loss_nan():
    from cai.train.ppo import _masked_mean, _ratio

    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    old = torch.tensor([[-1.0, -2.0, -float("inf"), -300.0]])
    new = torch.tensor([[-0.5, -2.0, -3.0, 900.0]])  # padding: anything, even exp overflow
    ratio = _ratio(new, old, mask)
    assert torch.isfinite(ratio).all() and ratio[0, 2:].tolist() == [1.0, 1.0]
    assert ratio[0, 0].item() == pytest.approx(math.exp(0.5))
    adv = torch.tensor([[1.0, -1.0, 0.0, 0.0]])
    assert torch.isfinite(_masked_mean(-adv * ratio, mask))
    assert torch.isnan(_masked_mean(-adv * torch.exp(new - old), mask))  # what the plain ratio gave


def test_a_reward_model_with_another_tokenizer_is_refused(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from cai.errors import InputError
    from cai.train.ppo import _same_tokenizer

    policy = AutoTokenizer.from_pretrained(tiny_model)
    _same_tokenizer("rm", AutoTokenizer.from_pretrained(tiny_model), policy)  # same vocabulary: fine
    other = AutoTokenizer.from_pretrained(tiny_model)
    other.add_tokens(["<extra-token>"])
    with pytest.raises(InputError) as info:
        _same_tokenizer("runs/rm", other, policy)
    (problem,) = info.value.problems
    assert str(problem).startswith("--reward-model: runs/rm: its tokenizer") and "differs from the policy's" in problem.message


def test_response_logprobs_from_kept_logits_equal_the_full_forward(tiny_model):
    """Logits are computed only where response tokens are predicted; the log-probs are the full forward's."""
    from transformers import AutoModelForCausalLM

    from cai.train.ppo import _logprobs, _positions

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    torch.manual_seed(0)
    ids = torch.randint(5, 500, (3, 14))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding in one row
    q = 9
    logp, logits = _logprobs(model, ids, mask, q, temperature=0.7)
    full = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits[:, q - 1:-1] / 0.7
    expected = torch.log_softmax(full.float(), -1).gather(-1, ids[:, q:, None]).squeeze(-1)
    assert logp.shape == (3, 14 - q) and logits.shape[:2] == (3, 14 - q)
    assert torch.allclose(logp, expected, atol=1e-5)
