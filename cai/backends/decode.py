"""Continuous batching for a transformers causal LM: our own decode loop over one batched KV cache.

Why not transformers' own paths: `model.generate` decodes a micro-batch until its longest row
ends (finished rows decode padding), and its continuous-batching API (`generate_batch`, 5.25) on
CPU drops the repetition penalty (its processors see only each row's last token), has one global
seed, and ran slower than one-at-a-time here. So, as that API does on GPU:

- up to `slots` rows decode together; a row that ends (EOS or its max_new_tokens) leaves, and
  pending rows are prefilled together and join, once enough slots are free to repay the copy;
- `prefix`: token ids every row starts with (a stage's system prompt and few-shot turns) are
  computed once and their KV cache shared; only each row's suffix is prefilled;
- each row's settings are its own: greedy, or sampled with its own torch.Generator seeded from
  its call, so a sample does not depend on which rows share its batch;
- positions come from the attention mask (cumsum - 1), as generate() derives them, and the
  repetition penalty is transformers' RepetitionPenaltyLogitsProcessor over the row's own prompt
  and output, so greedy outputs equal one-at-a-time `generate` (tests on the embedded model).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn.functional import pad as tpad
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass(frozen=True)
class Row:
    ids: list[int]
    max_new_tokens: int
    repetition_penalty: float = 1.0
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0


class _Layer(DynamicLayer):
    """A DynamicLayer over a preallocated buffer: a decode step copies its new column, not the cache."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, spare: int = 64):
        super().__init__()
        self.is_initialized, self.device = True, k.device
        b, h, n, d = k.shape
        self.bk, self.bv = k.new_empty(b, h, n + spare, d), v.new_empty(b, h, n + spare, d)
        self.bk[:, :, :n], self.bv[:, :, :n] = k, v
        self.n = n
        self._views()

    def _views(self) -> None:
        self.keys, self.values = self.bk[:, :, :self.n], self.bv[:, :, :self.n]

    def update(self, key_states, value_states, *args, **kwargs):
        m = key_states.shape[-2]
        if self.n + m > self.bk.shape[2]:
            b, h, _, d = self.bk.shape
            cap = max(2 * self.bk.shape[2], self.n + m)
            nk, nv = self.bk.new_empty(b, h, cap, d), self.bv.new_empty(b, h, cap, d)
            nk[:, :, :self.n], nv[:, :, :self.n] = self.keys, self.values
            self.bk, self.bv = nk, nv
        self.bk[:, :, self.n:self.n + m] = key_states
        self.bv[:, :, self.n:self.n + m] = value_states
        self.n += m
        self._views()
        return self.keys, self.values


def _cache(kvs) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = [_Layer(k, v) for k, v in kvs]
    return cache


def _kv(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _left_pad(kvs, n: int):
    return kvs if n == 0 else [(tpad(k, (0, 0, n, 0)), tpad(v, (0, 0, n, 0))) for k, v in kvs]


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """As generate() computes them: cumsum of the mask - 1 (padding positions set to 1)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


def _forward(model, cache, **inputs):
    """One forward pass with a KV cache, under the cache argument this transformers version names
    (`cache` from 5.25, `past_key_values` before); the output gets `kv`, the updated cache."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(**inputs, **{name: cache}, use_cache=True, logits_to_keep=1)
    out.kv = getattr(out, "cache", None) or out.past_key_values
    return out


def common_prefix(rows: list[list[int]], minimum: int = 32) -> list[int] | None:
    """The token ids all rows start with, when long enough to be worth sharing and shorter than every row."""
    if len(rows) < 2:
        return None
    first, n = rows[0], min(map(len, rows)) - 1
    for r in rows[1:]:
        n = next((i for i in range(n) if r[i] != first[i]), n)
    return first[:n] if n >= minimum else None


class _Choose:
    """Next tokens for a batch: repetition penalty, then argmax or a draw with each row's own generator."""

    def __init__(self, rows: list[Row]):
        self.rows = rows
        self.gens = {i: torch.Generator().manual_seed(r.seed) for i, r in enumerate(rows) if r.temperature > 0}

    def __call__(self, scores: torch.Tensor, idx: list[int], seen: torch.Tensor) -> list[int]:
        penalty = torch.tensor([[self.rows[i].repetition_penalty] for i in idx], device=scores.device)
        if (penalty != 1.0).any():  # RepetitionPenaltyLogitsProcessor, over each row's own tokens
            scores = torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)
        out = scores.argmax(-1).tolist()
        for j, i in enumerate(idx):
            row = self.rows[i]
            if row.temperature <= 0:
                continue
            logits = scores[j].cpu() / row.temperature  # each row's generator lives on the CPU
            if row.top_p < 1.0:  # as TopPLogitsWarper
                ordered, order = torch.sort(logits)
                drop = ordered.softmax(-1).cumsum(-1) <= 1 - row.top_p
                drop[-1:] = False
                logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
            out[j] = int(torch.multinomial(logits.softmax(-1), 1, generator=self.gens[i]))
        return out


@torch.inference_mode()
def generate(model, rows: list[Row], eos: set[int], pad_id: int, slots: int = 16,
             on_finish: Callable[[int], None] | None = None, share_prefix: bool = True) -> list[list[int]]:
    """Each row's new token ids (its ending EOS included), decoding up to `slots` rows at a time;
    `on_finish(1)` as each row ends. `share_prefix=False` is the plain path (tests, benchmarks)."""
    choose, vocab = _Choose(rows), model.config.vocab_size
    dev = model.device

    def T(data, **kw) -> torch.Tensor:
        return torch.tensor(data, device=dev, **kw)

    prefix = common_prefix([r.ids for r in rows]) if share_prefix else None
    n_pre = len(prefix) if prefix else 0
    prefix_kv = _kv(_forward(model, None, input_ids=T([prefix])).kv) if prefix else None
    refill = max(1, slots // 4)
    queue = sorted(range(len(rows)), key=lambda i: len(rows[i].ids), reverse=True)  # pop(): shortest first
    outs: list[list[int]] = [[] for _ in rows]
    active: list[int] = []
    seen = torch.zeros(0, vocab, dtype=torch.bool, device=dev)
    mask = torch.zeros(0, 0, dtype=torch.long, device=dev)
    nxt = torch.zeros(0, dtype=torch.long, device=dev)
    cache = None

    def ended(i: int) -> bool:
        return bool(outs[i]) and (outs[i][-1] in eos or len(outs[i]) >= rows[i].max_new_tokens)

    def step(idx: list[int], scores: torch.Tensor, seen_rows: torch.Tensor) -> list[int]:
        toks = choose(scores, idx, seen_rows)
        for i, t in zip(idx, toks):
            if not ended(i):  # a finished row still in the batch (compaction waits) adds nothing
                outs[i].append(t)
                if ended(i) and on_finish:
                    on_finish(1)
        return toks

    while queue or active:
        free = slots - len(active)
        if queue and (free >= refill or not active):
            new = [queue.pop() for _ in range(min(free, len(queue)))]
            suffixes = [rows[i].ids[n_pre:] for i in new]
            width = max(map(len, suffixes))
            ids = T([[pad_id] * (width - len(s)) + s for s in suffixes])
            m = T([[1] * n_pre + [0] * (width - len(s)) + [1] * len(s) for s in suffixes])
            start = _cache([(k.expand(len(new), -1, -1, -1), v.expand(len(new), -1, -1, -1))
                            for k, v in prefix_kv]) if prefix else None
            out = _forward(model, start, input_ids=ids, attention_mask=m, position_ids=_positions(m)[:, n_pre:])
            s_new = torch.zeros(len(new), vocab, dtype=torch.bool, device=dev)
            for j, i in enumerate(new):
                s_new[j, T(rows[i].ids)] = True
            toks = step(new, out.logits[:, -1].float(), s_new)
            s_new[T(range(len(new))), T(toks)] = True
            new_kv = _kv(out.kv)
            if active:  # splice: left-pad the shorter cache, stack along the batch
                width = max(mask.shape[1], m.shape[1])
                old_kv = _left_pad(_kv(cache), width - mask.shape[1])
                new_kv = _left_pad(new_kv, width - m.shape[1])
                mask = torch.cat([tpad(mask, (width - mask.shape[1], 0)), tpad(m, (width - m.shape[1], 0))])
                cache = _cache([(torch.cat([a, c]), torch.cat([b, d])) for (a, b), (c, d) in zip(old_kv, new_kv)])
            else:
                mask, cache = m, _cache([(k.contiguous(), v.contiguous()) for k, v in new_kv])
            active += new
            seen = torch.cat([seen, s_new])
            nxt = torch.cat([nxt, T(toks)])
        else:
            mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype, device=dev)], 1)
            out = _forward(model, cache, input_ids=nxt[:, None], attention_mask=mask,
                           position_ids=_positions(mask)[:, -1:])
            toks = step(active, out.logits[:, -1].float(), seen)
            seen[T(range(len(active))), T(toks)] = True
            nxt = T(toks)
        # Compaction copies the whole cache: done when enough slots can be refilled, or (nothing
        # queued) when half the batch has finished; until then finished rows ride along.
        keep = [j for j, i in enumerate(active) if not ended(i)]
        dead = len(active) - len(keep)
        if dead and (not keep or (queue and slots - len(keep) >= refill) or (not queue and 2 * dead >= len(active))):
            kt = T(keep, dtype=torch.long)
            active = [active[j] for j in keep]
            seen, nxt, mask = seen[kt], nxt[kt], mask[kt]
            lead = int((mask.cumsum(1) == 0).all(0).sum()) if active else 0
            mask = mask[:, lead:]
            cache = _cache([(k[kt, :, lead:], v[kt, :, lead:]) for k, v in _kv(cache)]) if active else None
    return outs
