"""A loopback stand-in for the Hub API endpoints `cai push` calls, recording every request.

It keeps repos in memory (files per branch) and answers create_repo, create_branch,
the repo tree listing, validate-yaml, preupload (every file "regular", so content
travels base64 inside the commit and no LFS/xet endpoint is needed) and commit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

from helpers import send_json


class FakeHub:
    def __init__(self, fail: int | None = None):
        self.requests: list[dict] = []  # method, path, headers, body (bytes)
        self.repos: dict[str, dict] = {}  # repo id -> {"private": bool, "branches": {name: {path: bytes}}}
        self.commits: list[dict] = []
        self.fail = fail  # answer every request with this status
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlparse(self.path)
                hub.requests.append({"method": method, "path": url.path, "query": url.query,
                                     "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                if hub.fail:
                    return send_json(self, hub.fail, json.dumps({"error": "Invalid credentials in Authorization header"}).encode())
                status, data = hub.route(method, url.path, body)
                send_json(self, status, json.dumps(data).encode())

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id]["branches"][branch]

    def route(self, method: str, path: str, body: bytes):
        parts = [unquote(p) for p in path.split("/") if p]
        if method == "POST" and parts == ["api", "repos", "create"]:
            req = json.loads(body)
            repo_id = f"{req['organization']}/{req['name']}"
            if repo_id in self.repos:
                return 409, {"error": "You already created this dataset repo", "url": f"{self.url}/datasets/{repo_id}"}
            self.repos[repo_id] = {"private": req.get("visibility") == "private" or bool(req.get("private")), "type": req.get("type"), "branches": {"main": {}}}
            return 200, {"url": f"{self.url}/datasets/{repo_id}", "name": repo_id}
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return 200, {}
        if len(parts) >= 6 and parts[:2] == ["api", "datasets"]:
            repo_id, action, rev = f"{parts[2]}/{parts[3]}", parts[4], parts[5]
            repo = self.repos.get(repo_id)
            if repo is None:
                return 404, {"error": "Repository not found"}
            if method == "POST" and action == "branch":
                repo["branches"].setdefault(rev, dict(repo["branches"]["main"]))
                return 200, {}
            branch = repo["branches"].get(rev)
            if branch is None:
                return 404, {"error": f"Invalid rev id: {rev}"}
            if method == "GET" and action == "tree":
                return 200, [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                             for p, b in sorted(branch.items())]
            if method == "POST" and action == "preupload":
                files = json.loads(body)["files"]
                return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                       for f in files]}
            if method == "POST" and action == "commit":
                ops = [json.loads(line) for line in body.splitlines() if line.strip()]
                for op in ops:
                    if op["key"] == "file":
                        branch[op["value"]["path"]] = base64.b64decode(op["value"]["content"])
                    elif op["key"] == "deletedFile":
                        branch.pop(op["value"]["path"], None)
                    elif op["key"] == "deletedFolder":
                        prefix = op["value"]["path"].rstrip("/") + "/"
                        for p in [p for p in branch if p.startswith(prefix)]:
                            del branch[p]
                oid = hashlib.sha1(body).hexdigest()
                self.commits.append({"repo": repo_id, "branch": rev, "ops": ops, "oid": oid})
                return 200, {"commitUrl": f"{self.url}/datasets/{repo_id}/commit/{oid}", "commitOid": oid,
                             "pullRequestUrl": None}
        return 404, {"error": f"no route {method} {path}"}
