"""Does an input fit the model's context: every prompt measured with the policy's own tokenizer at input check.

The transformers and vLLM backends run the model in-process, so how many tokens
a prompt becomes is known before any weights load: the tokenizer (a few MB) is
enough, and a fast tokenizer counts 100k prompts in seconds. A prompt that does
not fit is bad input (exit 2, its file and line), never cut silently. Each
prompt is rendered as the first stage sends it: the pipeline's system prompt
(if any), the prompt as the user's turn, the chat template's reply header.

An API backend (openai) is left to its server, which knows its model's context
and rejects what does not fit (the record then fails with the server's reason);
the scripted stand-in has no context. A conversation that outgrows the limit in
a later stage (critique rounds, the judge) fails its record in the backend
(cai/backends/hf.py), with the count and the limit as the reason.
"""

from __future__ import annotations

from typing import Sequence

from cai.backends import has_template, raw_text
from cai.errors import Problem

DEFAULT_MAX_INPUT_TOKENS = 4096  # the transformers backend's default input limit
COUNTED = ("transformers", "vllm")  # backends whose tokenizer is known here
BATCH = 4096  # prompts tokenized per call: bounded memory for huge files


def render(tokenizer, conversations: Sequence[list[dict]]) -> list[str]:
    """Each conversation as the model sees it (its chat template, or raw text), ready for the reply."""
    if has_template(tokenizer):
        return tokenizer.apply_chat_template(list(conversations), tokenize=False, add_generation_prompt=True)
    return [raw_text(c) for c in conversations]


def at_most_a_token_per_byte(tokenizer) -> bool:
    """Byte-level BPE with no normalizer (GPT-2's kind, SmolLM's): each token spans at least one byte
    of the text (a prefix space adds one), so a text shorter in bytes than a limit fits it. Others
    (a normalizer can lengthen a text) are always tokenized."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and backend.normalizer is None and "ByteLevel" in str(backend.pre_tokenizer)


def overlong(tokenizer, conversations: Sequence[list[dict]], limit: int) -> dict[int, int]:
    """{index: tokens} of the conversations longer than `limit` tokens, counted exactly.

    Rendered all at once and tokenized in batches by the fast tokenizer; with a byte-level
    tokenizer, a text with fewer bytes than the limit is known to fit without tokenizing it.
    """
    bounded = at_most_a_token_per_byte(tokenizer)
    found: dict[int, int] = {}
    for start in range(0, len(conversations), BATCH):
        texts = render(tokenizer, conversations[start:start + BATCH])
        todo = [i for i, t in enumerate(texts) if not (bounded and len(t.encode()) < limit)]
        if todo:
            ids = tokenizer([texts[i] for i in todo], add_special_tokens=False, return_attention_mask=False)["input_ids"]
            found.update({start + i: len(x) for i, x in zip(todo, ids) if len(x) > limit})
    return found


def model_context(config) -> int | None:
    """The model's position limit from its config (max_position_embeddings), if it names one."""
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def transformers_limit(max_input_tokens: int, context: int | None, new_tokens: int) -> tuple[int, bool]:
    """(most input tokens, whether the model's context sets it rather than max_input_tokens): the
    transformers backend's rule, applied at input check and to every later conversation alike."""
    if context is not None and context - new_tokens < max_input_tokens:
        return context - new_tokens, True
    return max_input_tokens, False


def input_limit(spec, new_tokens: int, context: int | None, stage: str = "respond") -> tuple[int, str]:
    """(most input tokens, why) for a spec whose stage generates up to `new_tokens`."""
    if spec.backend == "vllm":  # vLLM's max_model_len holds the prompt and the reply together
        total = spec.options.max_model_len
        return total - new_tokens, f"policy.options.max_model_len {total} less {new_tokens} new tokens for the {stage} stage"
    limit, by_context = transformers_limit(getattr(spec.options, "max_input_tokens", DEFAULT_MAX_INPUT_TOKENS),
                                           context, new_tokens)
    if by_context:
        return limit, f"its context of {context} tokens less {new_tokens} new tokens for the {stage} stage"
    return limit, "policy.options.max_input_tokens"


def overlong_prompts(config, examples: list[dict] | None) -> list[Problem]:
    """A problem (file:line) for each prompt the policy model cannot take whole; [] when all fit.

    Only for backends that run the model here (transformers, vllm). A model that cannot be
    resolved is not reported here: loading it reports that, as one line of its own.
    """
    spec = config.policy
    if not examples or spec.backend not in COUNTED:
        return []
    from transformers import AutoConfig, AutoTokenizer

    from cai import models

    try:
        ref = models.resolve(spec.model)
        tokenizer = AutoTokenizer.from_pretrained(ref.path, revision=ref.revision)
    except (models.ModelNotFound, OSError, ValueError):
        return []
    try:
        context = model_context(AutoConfig.from_pretrained(ref.path, revision=ref.revision))
    except (OSError, ValueError):
        context = None
    new_tokens, stage = config.sampling.respond.max_new_tokens, "respond"
    fb = config.feedback
    if fb.enabled and fb.pairs != "revision_vs_initial" and fb.sample_sampling.max_new_tokens > new_tokens:
        new_tokens, stage = fb.sample_sampling.max_new_tokens, "sample"  # answers the same conversation
    limit, why = input_limit(spec, new_tokens, context, stage)
    system = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    found = overlong(tokenizer, [system + [{"role": "user", "content": ex["prompt"]}] for ex in examples], limit)
    problems = []
    for i, n in sorted(found.items()):
        file, line, field = examples[i].get("where") or (examples[i].get("source") or "prompts", None, "prompt")
        problems.append(Problem(file, line, field, f"is {n} tokens; the policy model takes at most "
                                                   f"{limit} input tokens ({why})"))
    return problems
