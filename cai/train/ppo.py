"""Classic RLHF PPO with a reward model and a per-token KL penalty (Ziegler et al. 2019, Ouyang et al. 2022).

Why hand-written: TRL removed `PPOTrainer` and its value-head models (PR
#7020), and GRPO is a different algorithm (no value model, group baselines).
This module is the whole algorithm in one readable place. One step:

1. rollout  sample a response for each prompt of a batch from the policy
2. score    the reward model at the response's last token; a response that
            never ends (no EOS within max_new_tokens) loses `no_eos_penalty`.
            SmolLM2's pad token is its EOS, so lengths, not pad ids, mark the end.
3. rewards  per token: -kl_coef * (log p_policy - log p_ref); + score on the last token
4. GAE      advantages with gamma = 1, lambda = 0.95 from the value model's
            per-token values; returns = advantages + values; advantages whitened
5. update   `ppo_epochs` passes over mini-batches: clipped policy loss
            + vf_coef * clipped value loss (both clips 0.2)
6. KL       with `target_kl`, the coefficient adapts toward it (Ziegler's controller)

The reference is the policy with its LoRA adapter disabled (a frozen copy with
--full); the value model starts from the reward model (a scalar head on the
same kind of backbone) and reads per-token values from its hidden states.
"""

from __future__ import annotations

import copy
import math
import random
from typing import Callable

import torch

from cai.backends import prompt_ids
from cai.train import data
from cai.train.trl_algos import lora, load_policy, load_reward_model, on_gpu

RewardFn = Callable[[list, list[str]], list[float]]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def _whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Unit variance over the masked positions; `shift_mean=False` keeps the mean, as TRL did for
    rewards: subtracting it adds a per-token constant, which pays or charges every extra token."""
    mean = _masked_mean(x, mask)
    var = _masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def _ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pi/pi_old per response token; 1 past the end, where log-probs of padding may be -inf or huge
    (exp would give inf, and inf * 0 in a masked mean is NaN)."""
    return torch.exp(torch.where(mask.bool(), logp - old_logp, torch.zeros_like(logp)))


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(1) - 1).clamp(min=0)  # left padding: count real tokens only


def _logprobs(model, ids, mask, q: int, temperature: float):
    """Log-probabilities of the response tokens ids[:, q:] and the logits that gave them.

    Logits only where a response token is predicted (logits_to_keep): the vocabulary projection and
    its log-softmax over every prompt position were a fifth of a PPO step (bench/ppo_step.py)."""
    keep = ids.shape[1] - q + 1
    logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), logits_to_keep=keep).logits
    logits = logits[:, :-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, ids[:, q:, None]).squeeze(-1), logits


def _values(value_model, ids, mask, q: int) -> torch.Tensor:
    """Per-token values: the scalar head on every hidden state, for the state before each response token."""
    base = value_model.get_base_model() if hasattr(value_model, "get_base_model") else value_model
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).last_hidden_state
    return base.score(hidden).squeeze(-1)[:, q - 1:-1].float()


def gae(rewards, values, mask, gamma: float, lam: float):
    """Generalized advantage estimation over response tokens; positions past the end are masked out."""
    rewards, values = rewards * mask, values * mask
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    return adv * mask, (adv + values) * mask


def _same_tokenizer(path: str, reward_tok, policy_tok) -> None:
    """The value model starts from the reward model and reads the policy's token ids: another
    vocabulary would make its values silently meaningless."""
    if reward_tok.get_vocab() != policy_tok.get_vocab():
        from cai.errors import InputError, Problem

        raise InputError([Problem("--reward-model", None, "", (
            f"{path}: its tokenizer differs from the policy's ({len(reward_tok)} vs {len(policy_tok)} tokens); "
            "PPO's value model starts from it and reads the policy's token ids: train the reward model "
            "from the policy's base model"))])


class PPO:
    def __init__(self, config, model_path: str, tok, reward: str | RewardFn):
        self.c, self.p, self.tok = config, config.ppo, tok
        self.device = "cuda" if on_gpu() else "cpu"
        self.kl_coef = config.beta if config.beta is not None else self.p.kl_coef
        policy = load_policy(model_path)
        if config.lora:
            from peft import get_peft_model

            self.policy, self.ref = get_peft_model(policy, lora(config)), None
        else:
            self.policy = policy
            self.ref = copy.deepcopy(policy).eval().requires_grad_(False).to(self.device)
        self.policy.to(self.device).eval()  # eval: no dropout, so rollout and update log-probs agree
        if callable(reward):
            self.reward_fn, value_from = reward, model_path
        else:
            from cai.train.rewards import RewardScorer

            self.reward_fn, value_from = RewardScorer(reward, device=self.device), reward
            _same_tokenizer(reward, self.reward_fn.tok, tok)
        value = load_reward_model(value_from, tok)
        if config.lora:
            from peft import get_peft_model

            value = get_peft_model(value, lora(config, "SEQ_CLS"))
        self.value = value.to(self.device).eval()
        params = [p for m in (self.policy, self.value) for p in m.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=config.lr or 1e-5)
        self.eos = tok.eos_token_id

    def _ref_logprobs(self, ids, mask, q):
        if self.ref is not None:
            return _logprobs(self.ref, ids, mask, q, self.p.temperature)[0]
        with self.policy.disable_adapter():
            return _logprobs(self.policy, ids, mask, q, self.p.temperature)[0]

    @torch.no_grad()
    def rollout(self, prompts: list) -> dict:
        keep = max(8, self.c.max_length - self.p.max_new_tokens)
        rows = [prompt_ids(self.tok, p)[-keep:] for p in prompts]
        width = max(len(r) for r in rows)
        pad = self.tok.pad_token_id
        q_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        q_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        gen = self.policy.generate(input_ids=q_ids, attention_mask=q_mask, do_sample=True,
                                   temperature=self.p.temperature, top_p=self.p.top_p, top_k=0,
                                   max_new_tokens=self.p.max_new_tokens, pad_token_id=pad, eos_token_id=self.eos)
        resp = gen[:, width:]
        # pad == eos: the response ends at its first EOS (kept, it is an action); the rest is padding
        is_eos = resp == self.eos
        ended = is_eos.any(1)
        length = torch.where(ended, is_eos.int().argmax(1) + 1, torch.full_like(ended, resp.shape[1], dtype=torch.long))
        r_mask = (torch.arange(resp.shape[1], device=self.device)[None] < length[:, None]).long()
        ids, mask = torch.cat([q_ids, resp], 1), torch.cat([q_mask, r_mask], 1)
        texts = [self.tok.decode(r[:n], skip_special_tokens=True).strip() for r, n in zip(resp, length)]
        score = torch.tensor(self.reward_fn(prompts, texts), dtype=torch.float, device=self.device)
        logp, _ = _logprobs(self.policy, ids, mask, width, self.p.temperature)
        ref_logp = self._ref_logprobs(ids, mask, width)
        values = _values(self.value, ids, mask, width)
        m = r_mask.float()
        kl = (logp - ref_logp) * m
        penalised = score - self.p.no_eos_penalty * (~ended).float()
        rewards = -self.kl_coef * kl
        rewards[torch.arange(len(rows)), length - 1] += penalised
        if self.p.whiten_rewards:
            rewards = _whiten(rewards, m, shift_mean=False)
        adv, returns = gae(rewards, values, m, self.p.gamma, self.p.lam)
        return {"ids": ids, "mask": mask, "q": width, "r_mask": m, "logp": logp, "values": values,
                "adv": _whiten(adv, m), "returns": returns, "score": score, "kl": kl.sum(1),
                "ended": ended.float(), "length": length.float(), "texts": texts}

    def update(self, b: dict) -> dict:
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "clipfrac", "entropy", "approx_kl")}
        n = b["ids"].shape[0]
        for _ in range(self.p.ppo_epochs):
            order = torch.randperm(n)
            for start in range(0, n, self.p.mini_batch):
                i = order[start:start + self.p.mini_batch]
                ids, mask, m, q = b["ids"][i], b["mask"][i], b["r_mask"][i], b["q"]
                logp, logits = _logprobs(self.policy, ids, mask, q, self.p.temperature)
                ratio = _ratio(logp, b["logp"][i], m)
                adv = b["adv"][i]
                pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - self.p.clip, 1 + self.p.clip))
                policy_loss = _masked_mean(pg, m)
                v = _values(self.value, ids, mask, q)
                old_v, ret = b["values"][i], b["returns"][i]
                v_clipped = old_v + (v - old_v).clamp(-self.p.clip_value, self.p.clip_value)
                value_loss = 0.5 * _masked_mean(torch.max((v - ret) ** 2, (v_clipped - ret) ** 2), m)
                loss = policy_loss + self.p.vf_coef * value_loss
                self.opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], 1.0)
                self.opt.step()
                with torch.no_grad():
                    probs = torch.softmax(logits, -1)
                    entropy = -(probs * torch.log_softmax(logits, -1)).sum(-1)
                    stats["policy_loss"].append(policy_loss.item())
                    stats["value_loss"].append(value_loss.item())
                    stats["clipfrac"].append(_masked_mean(((ratio - 1).abs() > self.p.clip).float(), m).item())
                    stats["entropy"].append(_masked_mean(entropy, m).item())
                    stats["approx_kl"].append(0.5 * _masked_mean(torch.log(ratio) ** 2, m).item())
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def adapt_kl(self, kl: float, batch: int) -> None:
        if self.p.target_kl:
            error = max(-0.2, min(0.2, kl / self.p.target_kl - 1))
            self.kl_coef *= 1 + error * batch / self.p.kl_horizon


def train_ppo(config, source, model_path: str, tok, reward: str | RewardFn, progress=None):
    """Run PPO for max_steps rollout batches (or epochs over the prompts); returns (policy, history)."""
    torch.manual_seed(config.seed)
    prompts = list(data.require_rows(data.prompts(source), "ppo")["prompt"])
    ppo = PPO(config, model_path, tok, reward)
    per_epoch = math.ceil(len(prompts) / config.ppo.rollout_batch)
    steps = config.max_steps or max(1, round(config.epochs * per_epoch))
    rng = random.Random(config.seed)
    queue: list = []
    history: list[dict] = []
    if progress:
        progress.start(steps)
    for step in range(1, steps + 1):
        while len(queue) < config.ppo.rollout_batch:
            more = list(prompts)
            rng.shuffle(more)
            queue += more
        batch, queue = queue[:config.ppo.rollout_batch], queue[config.ppo.rollout_batch:]
        b = ppo.rollout(batch)
        s = ppo.update(b)
        kl = b["kl"].mean().item()
        row = {"step": step, "loss": s["policy_loss"] + config.ppo.vf_coef * s["value_loss"],
               "reward": b["score"].mean().item(), "kl": kl, "kl_coef": ppo.kl_coef,
               "response_length": b["length"].mean().item(), "ended_rate": b["ended"].mean().item(), **s,
               "sample": b["texts"][0][:200]}
        history.append(row)
        ppo.adapt_kl(kl, len(batch))
        if progress:
            progress.step(step, row)
    if progress:
        progress.stop()
    return ppo.policy, history
