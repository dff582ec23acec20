"""`cai review RUN`: the local review server (the standard library's threading HTTP server).

Why this and not a framework: the pages are rendered on the server from the
run's shards (a million records cannot go to the browser), there are four
GET pages and one POST, and Jinja2 already comes with torch and transformers;
a web framework would be a new dependency for a loopback tool. Safety:
- it binds 127.0.0.1 unless told otherwise (a one-line warning otherwise);
- every request needs a Host header naming this server (DNS rebinding);
- a write needs the per-server token the pages carry and an Origin of this
  server (no cross-site writes), and appends one line to RUN/review.jsonl,
  the only file the server ever writes;
- no file is served from disk: records are looked up by id in the index, so
  no path can leave the run folder, and paths with `..` are refused outright.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import secrets
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from cai.errors import InputError, Problem
from cai.review import decisions
from cai.review.index import FACETS, RunIndex
from cai.review.pages import STATES, Links, View

MAX_BODY = 1 << 20


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class Session:
    """What one server holds: the run's index, its token, who decides, and the hosts it answers to."""

    def __init__(self, run_dir: Path, host: str, port: int, who: str):
        self.run_dir, self.who = run_dir, who
        self.index = RunIndex(run_dir)
        self.token = secrets.token_urlsafe(24)
        self.host, self.port = host, port
        self._decisions, self._seen = {}, None

    def allowed_hosts(self) -> set[str]:
        names = {self.host, "localhost", "127.0.0.1", "[::1]"} if is_loopback(self.host) else \
            {self.host, socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1"}
        # A browser leaves the port out of Host when it is the scheme's default.
        return {f"{n}:{self.port}" for n in names} | (names if self.port == 80 else set())

    def host_ok(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        if host_header in self.allowed_hosts():
            return True
        # Bound to all interfaces: any IP literal is fine (a rebinding page comes with a domain name).
        name = host_header.rsplit(":", 1)[0].strip("[]")
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return not is_loopback(self.host) and host_header.endswith(f":{self.port}")

    def decisions(self) -> dict:
        """The decisions in force, re-read when review.jsonl changed (another tab or server)."""
        path = self.run_dir / decisions.FILE
        try:
            st = path.stat()
            seen = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            seen = None
        if seen != self._seen:
            self._decisions, self._seen = decisions.Review.of(self.run_dir).latest, seen
        return self._decisions

    def decide(self, body: dict) -> dict:
        """Check a decision from the page and append it; ValueError (400) or Changed (409) says what is wrong."""
        rid, pair, kind = body.get("record"), body.get("pair") or None, body.get("decision")
        if kind not in decisions.KINDS:
            raise ValueError("decision must be accept, reject or edit")
        found = self.index.get(rid) if isinstance(rid, str) else None
        if found is None:
            raise ValueError("no such record in this run")
        rec = found[1]
        if pair is None:
            current = decisions.record_hash(rec)
        else:
            comp = next((c for c in (rec.get("feedback") or {}).get("comparisons") or () if c.get("pair") == pair), None)
            if comp is None:
                raise ValueError("no such judged pair in this record")
            current = decisions.pair_hash(rec, comp)
        if body.get("hash") != current:  # a generate rewrote it after the page was loaded
            raise Changed("the record changed since this page was loaded: reload it and decide again")
        chosen, note = body.get("chosen"), body.get("note")
        if kind == "edit" and (not isinstance(chosen, str) or not chosen.strip()):
            raise ValueError("an edit needs the new chosen text")
        entry = {"who": self.who, "record": rid, "pair": pair, "hash": current, "decision": kind,
                 "swap": body.get("swap") is True, "chosen": chosen if kind == "edit" else None,
                 "note": note.strip() if isinstance(note, str) and note.strip() else None}
        return decisions.append(self.run_dir, entry)


class Changed(ValueError):
    pass


def _handler(review: Session):
    links = Links()

    class Handler(BaseHTTPRequestHandler):
        server_version = "cai-review"
        sys_version = ""

        def log_message(self, fmt, *args):  # quiet: the console shows the URL, not each request
            pass

        def _send(self, status: int, body: str, kind: str = "text/html; charset=utf-8", nonce: str = "") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Security-Policy", f"default-src 'none'; style-src 'unsafe-inline'; script-src "
                             f"'nonce-{nonce}'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _refuse(self) -> bool:
            if not review.host_ok(self.headers.get("Host")):
                self._send(421, "refused: this server answers only to its own address (Host header)\n", "text/plain")
                return True
            if ".." in unquote(unquote(self.path)).replace("\\", "/").split("?")[0]:
                self._send(400, "refused: the path leaves the run folder\n", "text/plain")
                return True
            return False

        def do_GET(self):
            try:
                self._get()
            except Exception as exc:  # noqa: BLE001 - one page failing must not stop the server
                self._send(500, f"error: {type(exc).__name__}: {exc}\n", "text/plain")

        def _get(self):
            if self._refuse():
                return
            url = urlsplit(self.path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            filters = {k: q[k] for k in (*FACETS, "review") if q.get(k)}
            if filters.get("review") not in (None, *STATES):
                filters.pop("review")
            review.index.refresh()  # new shards of a running generate appear on reload
            nonce = secrets.token_urlsafe(12)
            view = View(review.index, links, review.decisions, review.token, nonce)
            page = None
            if url.path == "/":
                number = q.get("page", "")
                page = view.list_page(filters, q.get("q", ""), int(number) if number.isascii() and number.isdigit() else 1)
            elif url.path == "/record":
                page = view.record_page(q.get("id", ""), filters, q.get("q", ""))
            elif url.path == "/principles":
                page = view.principles_page()
            elif url.path == "/principle":
                page = view.principle_page(q.get("id", ""))
            if page is None:
                self._send(404, "not found\n", "text/plain")
            else:
                self._send(200, page, nonce=nonce)

        def do_POST(self):
            if self._refuse():
                return
            if urlsplit(self.path).path != "/api/decide":
                return self._send(404, "not found\n", "text/plain")
            host = self.headers.get("Host")
            if self.headers.get("Origin") != f"http://{host}":
                return self._send(403, "refused: a decision must come from this server's own pages (Origin)\n",
                                  "text/plain")
            if not secrets.compare_digest(self.headers.get("X-CAI-Token", ""), review.token):
                return self._send(403, "refused: missing or wrong review token; reload the page\n", "text/plain")
            length = self.headers.get("Content-Length") or ""
            n = int(length) if length.isascii() and length.isdigit() else 0
            if not 0 < n <= MAX_BODY or "json" not in (self.headers.get("Content-Type") or ""):
                return self._send(400, "a decision is a JSON body of at most 1 MiB\n", "text/plain")
            try:
                body = json.loads(self.rfile.read(n))
                if not isinstance(body, dict):
                    raise ValueError("a decision is a JSON object")
                review.index.refresh()
                line = review.decide(body)
            except ValueError as exc:
                return self._send(409 if isinstance(exc, Changed) else 400, f"{exc}\n", "text/plain")
            self._send(200, json.dumps(line, ensure_ascii=False), "application/json")

    return Handler


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8765, who: str | None = None,
          ready=None, say=None) -> None:
    """Serve until interrupted. `ready(url, server)` is called once listening (the CLI prints the URL),
    `say(line)` once the port is held, before the records are read."""
    from cai.review.rebuild import read_run

    run_dir = Path(run_dir)
    read_run(run_dir)  # one line and exit 2 when RUN is not a run folder
    review = Session(run_dir, host, port, decisions.reviewer(who))
    try:
        server = ThreadingHTTPServer((host, port), _handler(review))
    except OSError as exc:
        why = "port in use (pick another with --port)" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise InputError([Problem("--port", None, "", f"{host}:{port}: {why}")]) from None
    server.daemon_threads = True
    review.port = server.server_address[1]  # --port 0: the one the system chose
    if say:
        say(f"reading the records of {run_dir} (a million take about 15 s) ...")
    review.index.refresh()
    try:
        if ready:
            ready(f"http://{host if ':' not in host else f'[{host}]'}:{review.port}/", server)
        server.serve_forever()
    finally:
        server.server_close()
