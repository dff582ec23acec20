"""Keep secrets out of files cai writes (run.json, the pushed copy of it).

Keys that name a secret (api_key, token, secret, password, authorization, ...)
lose their value; strings that look like a Hugging Face or OpenAI key, or a
Bearer header, are redacted; so is any value of a secret the process can see
(HF_TOKEN, OPENAI_API_KEY, the pipeline's api_key_env, the user's HF login).
Names of variables (`api_key_env: OPENAI_API_KEY`) and counts (`max_new_tokens`) stay.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

REDACTED = "<redacted>"
_SECRET_KEY = re.compile(
    r"^(.*[_-])?(api[_-]?key|apikey|token|access[_-]?token|secret|password|passwd|authorization|auth|bearer|cookie)$",
    re.IGNORECASE)
_SECRET_VALUE = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{16,}|Bearer\s+\S+)")
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY")


def known_secrets(extra_env: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Values of the secrets this process can see: the usual variables, any variable named like
    a secret (..._API_KEY, ..._TOKEN, ..._SECRET, ...; so a custom api_key_env is covered), the HF login."""
    names = {*_ENV, *extra_env, *(k for k in os.environ if _SECRET_ENV.search(k))}
    found = [os.environ.get(k, "") for k in sorted(names)]
    try:
        from huggingface_hub import get_token

        found.append(get_token() or "")
    except Exception:  # noqa: BLE001 - no token (or no huggingface_hub) is fine here
        pass
    # Longest first: a secret containing another is replaced whole.
    return tuple(sorted({s for s in found if len(s) >= 8}, key=len, reverse=True))


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


def masked(value, secrets: tuple[str, ...] | None = None):
    """A copy fit for a model identity (cache keys, records, the dataset's `model` column).

    A secret-named key's value becomes "<secret>": a key authenticates a request, it
    does not change the answer, so the cache stays correct across key rotations. A
    secret-looking value under another name is replaced by a short hash of itself, so
    distinct values still key distinct cache entries. Anything else is left as it is,
    which keeps identities without secrets byte-identical to earlier releases.
    """
    if secrets is None:
        secrets = known_secrets()
    if isinstance(value, dict):
        return {k: ("<secret>" if _SECRET_KEY.match(str(k)) and v not in (None, "") else masked(v, secrets))
                for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, secrets) for v in value]
    if isinstance(value, str):
        def digest(text: str) -> str:
            return f"<secret:{hashlib.sha256(text.encode()).hexdigest()[:12]}>"
        for s in secrets:
            value = value.replace(s, digest(s))
        return _SECRET_VALUE.sub(lambda m: digest(m.group(0)), value)
    return value


def scrub_run(run: dict) -> dict:
    config = run.get("config") or {}
    specs = [config.get("policy") or {}, config.get("judge") or {}]
    # Old run.json files (before model specs) kept api_key_env flat.
    env = [config.get("api_key_env"), (config.get("judge") or {}).get("api_key_env")]
    env += [(s.get("options") or {}).get("api_key_env") for s in specs]
    return scrub(run, known_secrets(tuple(e for e in env if isinstance(e, str) and e)))


_ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:[\\/])")


def unlocated(value, run_dir: Path):
    """A copy of a JSON value that names no place on this machine, for what is published:
    absolute paths become relative to the run folder when inside it, else just the file's name;
    the run folder and the home directory inside longer text become `.` and `~`."""
    run, home = str(Path(run_dir).resolve()), str(Path.home())
    if isinstance(value, dict):
        return {k: unlocated(v, run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [unlocated(v, run_dir) for v in value]
    if not isinstance(value, str):
        return value
    if _ABSOLUTE.match(value) and "\n" not in value:
        path = Path(value).expanduser().resolve()
        return str(path.relative_to(run)) if path.is_relative_to(run) else path.name
    value = value.replace(run + os.sep, "").replace(run, ".")
    return value.replace(home, "~") if len(home) > 1 else value


class ScrubbedStream:
    """A text stream that scrubs everything written to it (the CLI wraps stdout and stderr in it),
    so a server error echoing `Authorization: Bearer sk-...` never reaches the terminal or a log."""

    def __init__(self, stream, secrets: tuple[str, ...] | None = None):
        self._stream = stream
        self._secrets = known_secrets() if secrets is None else secrets

    def write(self, text: str) -> int:
        self._stream.write(scrub(text, self._secrets) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name):  # isatty, fileno, flush, encoding, buffer...: the real stream's
        return getattr(self._stream, name)
