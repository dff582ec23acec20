"""`cai review RUN --export DIR`: the review pages as plain, self-contained HTML files, read-only.

The same templates as the server, with file links: index.html (all records,
paged), one list per filter value (list-<facet>-<value>.html), a page per
record and per principle, principles.html. No server, no remote assets, no
decision controls (the decisions already made are shown). A folder is only
ever written if it is empty or an earlier export made it (the marker file).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from pathlib import Path

from cai.errors import InputError, Problem
from cai.review import decisions
from cai.review.index import RunIndex, facet_counts
from cai.review.pages import View, pages_of
from cai.review.rebuild import read_run
from cai.runfiles import write_text_atomic

MARKER = ".cai-review-export"


def slug(text: str) -> str:
    """A file-name-safe, unique form of an id (ids may hold any character)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]


class ExportLinks:
    """Relative file links; a list exists for no filter or one filter (no search in a static copy)."""
    static = True

    def list(self, filters: dict, page: int = 1) -> str | None:
        items = [(k, v) for k, v in filters.items() if v]
        if len(items) > 1 or any(k == "q" for k, _ in items):
            return None
        stem = "index" if not items else f"list-{items[0][0]}-{slug(items[0][1])}"
        return f"{stem}.html" if page <= 1 else f"{stem}-{page}.html"

    def record(self, rid: str, filters: dict | None = None) -> str:
        return f"record-{slug(rid)}.html"

    def principle(self, pid: str) -> str:
        return f"principle-{slug(pid)}.html"

    def principles(self) -> str:
        return "principles.html"


def _claim(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError([Problem("--export", None, "", f"{out}: is a file; name a folder")])
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise InputError([Problem("--export", None, "", f"{out}: not empty and not an earlier export; "
                                  "name an empty or new folder")])
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.html"):  # an earlier export's pages: replaced whole
        old.unlink()


def export(run_dir: str | Path, out: str | Path) -> int:
    """Write every page; return how many files."""
    run_dir, out = Path(run_dir), Path(out)
    read_run(run_dir)
    _claim(out)
    (out / MARKER).write_text(f"made by cai review --export from {run_dir.resolve()}\n", encoding="utf-8")
    index = RunIndex(run_dir)
    index.refresh()
    latest = decisions.Review.of(run_dir).latest
    links = ExportLinks()
    view = View(index, links, lambda: latest, nonce=secrets.token_urlsafe(12))
    written = 0

    def page(name: str | None, html: str | None) -> None:
        nonlocal written
        if name and html is not None:
            write_text_atomic(out / name, html)
            written += 1

    lists = [{}] + [{facet: value} for facet, counted in facet_counts(index.current).items()
                    for value in counted]
    states = {view.state(latest, e.id) for e in index.current}
    lists += [{"review": s} for s in sorted(states)]
    for filters in lists:
        for n in range(1, pages_of(view.select(filters, "", latest)[1]) + 1):
            page(links.list(filters, n), view.list_page(filters, "", n))
    for e in index.current:
        page(links.record(e.id), view.record_page(e.id, {}))
    page(links.principles(), view.principles_page())
    for p in view.principle_stats():
        page(links.principle(p["id"]), view.principle_page(p["id"]))
    return written
