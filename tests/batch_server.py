"""A loopback OpenAI Batch API: /files and /batches with the real life cycle, each request answered
by a real chat server (the llama.cpp one the API tests run) or, without one, by an echo.

validating -> in_progress (requests answered one by one, `latency` each) -> finalizing -> completed,
with an output file (and an error file for failed requests). Faults, by `mode`: "partial" (every
third request fails with a 500 in the error file), "expire" (the batch expires after half its
requests: the answered half is in the output file), "fail" (validation fails: no request answered).
It counts what matters for resume: batches created and request lines received.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from email.parser import BytesParser
from email.policy import default
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from helpers import send_json


class BatchServer:
    def __init__(self, upstream: str | None = None, latency: float = 0.0, mode: str | None = None,
                 model: str = "smollm2"):
        self.upstream, self.latency, self.mode, self.model = upstream, latency, mode, model
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.created: list[str] = []  # batch ids, in order of creation
        self.request_lines = 0  # lines of every batch created
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _json(self, data, status=200):
                send_json(self, status, json.dumps(data).encode())

            def do_GET(self):
                parts = self.path.split("?")[0].strip("/").split("/")  # v1, files|batches|models, id, content
                if parts[1] == "models":
                    return self._json({"object": "list", "data": [{"id": server.model, "object": "model"}]})
                if parts[1] == "files" and parts[-1] == "content":
                    data = server.files[parts[2]]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return self.wfile.write(data)
                if parts[1] == "batches":
                    with server.lock:
                        return self._json(dict(server.batches[parts[2]]))
                self._json({"error": {"message": "not found"}}, 404)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                kind = self.path.strip("/").split("/")[1]
                if kind == "files":
                    msg = BytesParser(policy=default).parsebytes(
                        b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
                    data = next(p.get_payload(decode=True) for p in msg.iter_parts()
                                if p.get_param("name", header="content-disposition") == "file")
                    file_id = server._file(data)
                    return self._json({"id": file_id, "object": "file", "bytes": len(data), "created_at": 0,
                                       "filename": "input.jsonl", "purpose": "batch", "status": "processed"})
                if kind == "batches":
                    return self._json(server._create(json.loads(body)))
                self._json({"error": {"message": "not found"}}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _file(self, data: bytes) -> str:
        with self.lock:
            file_id = f"file-{len(self.files)}"
            self.files[file_id] = data
        return file_id

    def _create(self, req: dict) -> dict:
        lines = [json.loads(x) for x in self.files[req["input_file_id"]].decode().splitlines() if x.strip()]
        with self.lock:
            batch_id = f"batch_{len(self.created)}"
            self.created.append(batch_id)
            self.request_lines += len(lines)
            self.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": req["endpoint"], "errors": None,
                "input_file_id": req["input_file_id"], "completion_window": req["completion_window"],
                "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
        threading.Thread(target=self._work, args=(batch_id, lines), daemon=True).start()
        return dict(self.batches[batch_id])

    def _set(self, batch_id: str, **fields) -> None:
        with self.lock:
            self.batches[batch_id].update(fields)

    def _answer(self, body: dict) -> dict:
        if self.upstream is None:
            text = "echo: " + body["messages"][-1]["content"]  # as helpers.Stub answers, and counts
            prompt = len(json.dumps(body["messages"])) // 4
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": len(text.split()),
                              "total_tokens": prompt + len(text.split())}}
        req = urllib.request.Request(self.upstream + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.loads(resp.read())

    def _work(self, batch_id: str, lines: list[dict]) -> None:
        time.sleep(0.05)
        if self.mode == "fail":
            return self._set(batch_id, status="failed", errors={"object": "list", "data": [
                {"code": "invalid_request", "message": "injected validation failure", "line": 1}]})
        self._set(batch_id, status="in_progress")
        done, errors = [], []
        for n, line in enumerate(lines):
            if self.mode == "expire" and n >= len(lines) // 2:
                break
            time.sleep(self.latency)
            if self.mode == "partial" and n % 3 == 2:
                errors.append({"id": f"r{n}", "custom_id": line["custom_id"], "error": None, "response": {
                    "status_code": 500, "request_id": "x", "body": {"error": {"message": "injected server error"}}}})
            else:
                done.append({"id": f"r{n}", "custom_id": line["custom_id"], "error": None, "response": {
                    "status_code": 200, "request_id": "x", "body": self._answer(line["body"])}})
            with self.lock:
                self.batches[batch_id]["request_counts"] = {"total": len(lines), "completed": len(done),
                                                            "failed": len(errors)}
        self._set(batch_id, status="finalizing")
        out = self._file("\n".join(json.dumps(r) for r in done).encode()) if done else None
        err = self._file("\n".join(json.dumps(r) for r in errors).encode()) if errors else None
        self._set(batch_id, status="expired" if self.mode == "expire" else "completed",
                  output_file_id=out, error_file_id=err)

    def close(self) -> None:
        self.server.shutdown()
