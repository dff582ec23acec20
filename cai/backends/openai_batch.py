"""OpenAI's Batch API (half the price, results within the window): one request file per stage step.

Stages depend on each other (respond -> critique -> revise -> judge), so each
step's pending calls of a chunk become one batch, split at the provider's
limits (50,000 requests or 200 MB a file); the run waits for it, polling,
then feeds the answers through the call cache like online ones. A batch's id
is written to RUN/batches/ before any waiting, keyed by its request file's
digest: a killed run, run again, makes the same file, finds the id and
re-attaches to the batch in flight instead of paying for it twice. Requests
the batch did not answer (errors, an expired or failed batch) come back as
failures: their prompts stay pending, and the next run sends only those.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import openai

from cai.backends import CallFailed, Progress
from cai.runfiles import write_json

MAX_REQUESTS = 50_000
MAX_BYTES = 190 * 2**20  # under the 200 MB file limit
ENDPOINT = "/v1/chat/completions"
DONE = {"completed", "failed", "expired", "cancelled"}


def split(lines: list[str], max_requests: int = MAX_REQUESTS, max_bytes: int = MAX_BYTES) -> list[list[str]]:
    parts, part, size = [], [], 0
    for line in lines:
        if part and (len(part) >= max_requests or size + len(line) + 1 > max_bytes):
            parts.append(part)
            part, size = [], 0
        part.append(line)
        size += len(line.encode()) + 1
    return parts + ([part] if part else [])


class BatchJobs:
    def __init__(self, client_args: dict, state_dir: Path, poll_seconds: float, stats: dict):
        self.client = openai.OpenAI(**client_args)
        self.state_dir, self.poll, self.stats = Path(state_dir), poll_seconds, stats

    def _submit(self, data: str) -> str:
        """The batch for this request file: the one already submitted (re-attached), or a new one."""
        digest = hashlib.sha256(data.encode()).hexdigest()[:24]
        state = self.state_dir / f"{digest}.json"
        if state.exists():
            batch_id = json.loads(state.read_text())["batch_id"]
            # A batch that failed or was cancelled answered nothing: this file is submitted afresh.
            if self.client.batches.retrieve(batch_id).status not in ("failed", "cancelled"):
                self.stats["batches_reattached"] += 1
                return batch_id
        upload = self.client.files.create(file=(f"cai-{digest}.jsonl", data.encode()), purpose="batch")
        batch = self.client.batches.create(input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h")
        write_json(state, {"batch_id": batch.id, "input_file_id": upload.id, "requests": data.count("\n") + 1,
                              "submitted": time.time()})
        self.stats["batches_submitted"] += 1
        self.stats["batch_requests"] += data.count("\n") + 1
        return batch.id

    def run(self, bodies: list[dict], progress: Progress | None, unit: int = 1) -> list[dict | CallFailed]:
        """The response body of each request (in order), or its failure."""
        ids = [f"{i}-{hashlib.sha256(json.dumps(b, sort_keys=True).encode()).hexdigest()[:16]}" for i, b in enumerate(bodies)]
        lines = [json.dumps({"custom_id": c, "method": "POST", "url": ENDPOINT, "body": b}, sort_keys=True)
                 for c, b in zip(ids, bodies)]
        batches = [self._submit("\n".join(part)) for part in split(lines)]
        finished = self._wait(batches, progress, unit)
        found: dict[str, dict | CallFailed] = {}
        for batch in finished:
            found.update(self._results(batch))
        return [found.get(c) or CallFailed(self._unanswered(finished)) for c in ids]

    def _wait(self, ids: list[str], progress: Progress | None, unit: int) -> list:
        counted: dict[str, int] = {}
        while True:
            batches = [self.client.batches.retrieve(i) for i in ids]
            for b in batches:
                rc = b.request_counts
                now = (rc.completed + rc.failed) if rc else 0
                if progress and now > counted.get(b.id, 0):
                    progress((now - counted.get(b.id, 0)) * unit)
                counted[b.id] = max(now, counted.get(b.id, 0))
            if all(b.status in DONE for b in batches):
                return batches
            time.sleep(self.poll)

    def _results(self, batch) -> dict[str, dict | CallFailed]:
        out: dict[str, dict | CallFailed] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for line in self.client.files.content(file_id).text.splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                response = row.get("response") or {}
                if response.get("status_code") == 200:
                    out[row["custom_id"]] = response["body"]
                else:
                    error = row.get("error") or (response.get("body") or {}).get("error") or {}
                    message = error.get("message") if isinstance(error, dict) else str(error)
                    out[row["custom_id"]] = CallFailed(f"batch {batch.id}: request failed "
                                                       f"({response.get('status_code')}): {message}")
        return out

    @staticmethod
    def _unanswered(batches) -> str:
        states = ", ".join(f"{b.id} {b.status}" for b in batches)
        errors = "; ".join(e.message for b in batches if b.errors for e in (b.errors.data or []) if e.message)
        return f"not answered by the batch ({states}{': ' + errors if errors else ''}); the next run sends it again"
