"""`--export-batch DIR` / `--import-batch FILE`: the run's calls as OpenAI batch files, run anywhere.

Export is a run of the pipeline whose model answers only from the cache: each
record goes as far as cached answers take it, and the first call it lacks is
written to DIR/requests.jsonl as an OpenAI batch request (`custom_id`: which
model and kind of call, and our cache key). Records that need nothing more are
stored and the dataset is built, as by any run. `vllm run-batch` (or a
provider's Batch API) answers the file; import puts the answers in the cache
under their keys. Export again writes the next stage's calls; when there are
none left, the run is complete. A request file holds the model name and the
conversation, never a key or other option of the spec.
"""

from __future__ import annotations

import json
from pathlib import Path

from cai.backends import CallFailed
from cai.backends.openai_batch import ENDPOINT
from cai.cache import Cache, call_key
from cai.errors import InputError, Problem
from cai.runfiles import write_text_atomic

REQUESTS = "requests.jsonl"
MARKER = ".cai-export"  # an export folder cai made, which the next export may rewrite
EXPORTED = "exported to a batch file"  # the reason an exported call's record waits
REQUEST_OPTIONS = {"extra_body", "repetition_penalty_field", "structured_output"}  # never the key or URL


def check_folder(folder: str | Path) -> Path:
    """An empty or missing folder, or one an earlier export made: never a folder of the user's."""
    from cai.rundir import check_out

    path = Path(folder).expanduser().resolve()
    if path.is_dir() and any(path.iterdir()) and not (path / MARKER).is_file():
        raise InputError([Problem("command line", None, "--export-batch", f"{folder} is not empty and was not made "
                                  "by `cai generate --export-batch`; name a new or empty folder")])
    check_out(path, "--export-batch")
    return path


def needs_openai(config) -> None:
    if config.policy.backend != "openai" or (config.judge and config.judge.backend != "openai"):
        raise InputError([Problem("policy.backend", None, "", "--export-batch and --import-batch need the openai "
                                  "backend: model names the model as the batch runner serves it (e.g. the --model "
                                  "of vllm run-batch), so answers are cached under the identity that reads them")])


class Exporter:
    """A backend that writes each call it is asked for to the request file, answering none."""

    supports_logprobs = True

    def __init__(self, spec, role: str, lines: list[str]):
        from cai.backends.loading import spec_identity

        self.spec, self.role, self.lines = spec, role, lines
        self.identity = spec_identity(spec)

    def _write(self, kind: str, key: str, body: dict) -> CallFailed:
        self.lines.append(json.dumps({"custom_id": f"{self.role}.{kind}.{key}", "method": "POST", "url": ENDPOINT,
                                      "body": body}, ensure_ascii=False))
        return CallFailed(EXPORTED)

    def chat(self, conversations, sampling, progress=None):
        from cai.backends.openai_wire import chat_request

        return [self._write("chat", call_key(self.identity, "chat", c, s.key()),
                            chat_request(self.spec.model, c, s, **self.spec.options.model_dump(include=REQUEST_OPTIONS)))
                for c, s in zip(conversations, sampling)]

    def choice_logprobs(self, conversations, choices, progress=None):
        from cai.backends.openai_wire import score_request

        return [self._write("choices", call_key(self.identity, "choices", c, {"choices": list(choices)}),
                            score_request(self.spec.model, self.spec.options.extra_body, c)) for c in conversations]


def write_requests(folder: Path, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("made by `cai generate --export-batch`; rewritten by the next export\n")
    path = folder / REQUESTS
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return path


def import_results(config, results: str | Path) -> dict:
    """Answers of a batch results file (vllm run-batch's or a provider's output) into the run's cache."""
    from openai.types.chat import ChatCompletion

    from cai.backends.loading import spec_identity
    from cai.backends.openai_wire import parse_reply, parse_scores
    from cai.judge import CHOICES

    identities = {"policy": spec_identity(config.policy), "judge": spec_identity(config.judge_spec(), "--judge-model")}
    rows, failed, errors = [], 0, []
    for n, line in enumerate(Path(results).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            role, kind, key = row["custom_id"].split(".", 2)
            response = row.get("response") or {}
            if response.get("status_code") != 200:
                failed += 1
                errors.append(f"line {n}: {row.get('error') or (response.get('body') or {}).get('error')}")
                continue
            resp = ChatCompletion.model_validate(response["body"])
            value, used = parse_reply(resp) if kind == "chat" else parse_scores(resp, CHOICES)
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError([Problem(str(results), n, "", f"not a batch result line of ours ({exc})")]) from None
        rows.append((key, identities[role], value, used))
    cache = Cache(config.resolved_out() / "cache.sqlite", enabled=True)
    try:
        cache.put_many(rows)
    finally:
        cache.close()
    return {"imported": len(rows), "failed": failed, "errors": errors[:5]}
