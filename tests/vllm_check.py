"""Run with .venv-vllm's python: the vllm backend's greedy answers and choice log-probs, as JSON.

    python tests/vllm_check.py CONVERSATIONS.json OUT.json
"""

import json
import sys

from cai.backends import Sampling, create

if __name__ == "__main__":  # vLLM spawns workers that re-import this module
    conversations = json.load(open(sys.argv[1]))
    backend = create("vllm", model="embedded", gpu_memory_utilization=0.3, dtype="float32", max_model_len=2048)
    answers = backend.chat(conversations, [Sampling(max_new_tokens=24)] * len(conversations))
    logprobs = backend.choice_logprobs(conversations[:2], [" (A)", " (B)"])
    # A prefilled reply (the judge's "The answer is: ("), continued, not closed, scored and generated.
    prefilled = [c + [{"role": "assistant", "content": "The answer is: ("}] for c in conversations[:2]]
    prefilled_logprobs = backend.choice_logprobs(prefilled, ["A", "B"])
    prefilled_chat = backend.chat(prefilled, [Sampling(max_new_tokens=8)] * 2)
    # One conversation over max_model_len (2048) among fitting ones: it alone fails, with its reason.
    long = [{"role": "user", "content": "word " * 3000}]
    mixed = backend.chat([conversations[0], long], [Sampling(max_new_tokens=24)] * 2)
    backend.close()
    json.dump({"identity": backend.identity, "chat": answers, "logprobs": logprobs,
               "prefilled_logprobs": prefilled_logprobs, "prefilled_chat": prefilled_chat,
               "mixed": [x if isinstance(x, str) else f"failed: {x}" for x in mixed]}, open(sys.argv[2], "w"))
