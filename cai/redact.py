"""Keep secrets out of files cai writes (run.json, the pushed copy of it).

Keys that name a secret (api_key, token, secret, password, authorization, ...)
lose their value; strings that look like a Hugging Face or OpenAI key, or a
Bearer header, are redacted; so is any value of a secret the process can see
(HF_TOKEN, OPENAI_API_KEY, the pipeline's api_key_env, the user's HF login).
Names of variables (`api_key_env: OPENAI_API_KEY`) and counts (`max_new_tokens`) stay.
"""

from __future__ import annotations

import os
import re

REDACTED = "<redacted>"
_SECRET_KEY = re.compile(
    r"^(.*[_-])?(api[_-]?key|apikey|token|access[_-]?token|secret|password|passwd|authorization|auth|bearer|cookie)$",
    re.IGNORECASE)
_SECRET_VALUE = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{16,}|Bearer\s+\S+)")
_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY")


def known_secrets(extra_env: tuple[str, ...] = ()) -> tuple[str, ...]:
    found = [os.environ.get(k, "") for k in (*_ENV, *extra_env)]
    try:
        from huggingface_hub import get_token

        found.append(get_token() or "")
    except Exception:  # noqa: BLE001 - no token (or no huggingface_hub) is fine here
        pass
    return tuple(s for s in found if len(s) >= 8)


def scrub(value, secrets: tuple[str, ...] = ()):
    """A copy of a JSON value without secret-named keys' values and with token-looking strings redacted."""
    if isinstance(value, dict):
        return {k: (REDACTED if _SECRET_KEY.match(str(k)) and v not in (None, "") else scrub(v, secrets))
                for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, secrets) for v in value]
    if isinstance(value, str):
        for s in secrets:
            value = value.replace(s, REDACTED)
        return _SECRET_VALUE.sub(REDACTED, value)
    return value


def scrub_run(run: dict) -> dict:
    config = run.get("config") or {}
    specs = [config.get("policy") or {}, config.get("judge") or {}]
    # Old run.json files (before model specs) kept api_key_env flat.
    env = [config.get("api_key_env"), (config.get("judge") or {}).get("api_key_env")]
    env += [(s.get("options") or {}).get("api_key_env") for s in specs]
    return scrub(run, known_secrets(tuple(e for e in env if isinstance(e, str) and e)))
