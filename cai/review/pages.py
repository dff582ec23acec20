"""The review pages: list, record, principles and principle, rendered from a RunIndex with Jinja2.

The same templates serve the live server and the static export; only the
links differ (Links / ExportLinks). Jinja2 autoescapes every value, so
record text is shown as text wherever it lands, and the pages carry no
remote assets: one inline style sheet and one inline script (allowed by the
page's nonce, nothing else runs).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from urllib.parse import urlencode

import jinja2

from cai.labels import label
from cai.quality import EXPLAIN
from cai.review.decisions import pair_hash, record_hash
from cai.review.index import FACETS, RunIndex, feedback_settings

PAGE = 50
# A record's review state in the list: its own decision, else "pairs" when only some of its judged pairs
# have one. Rows on the page also show "stale" (the record changed since); counting that needs every record.
STATES = ("undecided", "accept", "reject", "edit", "pairs")
_ENV = jinja2.Environment(loader=jinja2.PackageLoader("cai.review", "templates"), autoescape=True,
                          trim_blocks=True, lstrip_blocks=True)
_ENV.filters["combine"] = lambda d, key, value: {**d, key: value}  # a filter link: the others, and this one


def word_diff(old: str, new: str) -> list[tuple[str, str]]:
    """(op, text) pieces turning `old` into `new` word by word: '=' kept, '-' removed, '+' added."""
    a, b = re.findall(r"\S+|\s+", old or ""), re.findall(r"\S+|\s+", new or "")
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(("=", "".join(b[j1:j2])))
            continue
        if i2 > i1:
            out.append(("-", "".join(a[i1:i2])))
        if j2 > j1:
            out.append(("+", "".join(b[j1:j2])))
    return out


class Links:
    """URLs of the live server: filters travel in the query string."""
    static = False

    def list(self, filters: dict, page: int = 1) -> str | None:
        q = {k: v for k, v in filters.items() if v}
        return "/?" + urlencode({**q, **({"page": page} if page > 1 else {})}) if q or page > 1 else "/"

    def record(self, rid: str, filters: dict | None = None) -> str:
        return "/record?" + urlencode({"id": rid, **{k: v for k, v in (filters or {}).items() if v}})

    def principle(self, pid: str) -> str:
        return "/principle?" + urlencode({"id": pid})

    def principles(self) -> str:
        return "/principles"


class View:
    """Builds each page's values; `decisions()` gives the review lines in force (server: re-read per request)."""

    def __init__(self, index: RunIndex, links, decisions, token: str = "", nonce: str = ""):
        self.index, self.links, self.decisions = index, links, decisions
        self.token, self.nonce = token, nonce

    def render(self, template: str, **values) -> str:
        run = self.index.run
        return _ENV.get_template(template).render(
            links=self.links, token=self.token, nonce=self.nonce, static=self.links.static,
            run_name=self.index.run_dir.name, status=run.get("status", "unknown"),
            damaged=list(self.index.damaged.values()), total=len(self.index.current), explain=EXPLAIN, **values)

    def state(self, latest: dict, rid: str) -> str:
        d = latest.get((rid, None))
        if d:
            return d["decision"]
        if getattr(self, "_paired", (None,))[0] is not latest:
            self._paired = (latest, {k[0] for k in latest if k[1]})
        return "pairs" if rid in self._paired[1] else "undecided"

    def select(self, filters: dict, query: str, latest: dict) -> tuple[list, list]:
        """(entries matching the facet filters and search, those also in the review-state filter)."""
        entries = self.index.select({k: v for k, v in filters.items() if k in FACETS}, query)
        wanted = filters.get("review")
        return entries, [e for e in entries if self.state(latest, e.id) == wanted] if wanted else entries

    def list_page(self, filters: dict, query: str = "", page: int = 1) -> str:
        latest = self.decisions()
        selected, entries = self.select(filters, query, latest)
        counts = dict(self.index.counts({k: v for k, v in filters.items() if k in FACETS}, query))
        counts["review"] = Counter(self.state(latest, e.id) for e in selected)
        pages = pages_of(entries)
        page = min(max(page, 1), pages)
        every = _keep(filters, query)
        rows = []
        for e in entries[(page - 1) * PAGE: page * PAGE]:
            rec = self.index.load(e)
            h, d = record_hash(rec), latest.get((e.id, None))
            rows.append({"id": e.id, "prompt": rec.get("prompt") or "", "facets": e.facets, "hash": h,
                         "state": "stale" if d and d["hash"] != h else self.state(latest, e.id),
                         "href": self.links.record(e.id, every)})
        return self.render("list.html", rows=rows, counts=counts, filters=filters, query=query, page=page,
                           pages=pages, matched=len(entries), first=(page - 1) * PAGE,
                           facet_names=(*FACETS, "review"), every=every,
                           prev=self.links.list(every, page - 1) if page > 1 else None,
                           next=self.links.list(every, page + 1) if page < pages else None)

    def record_page(self, rid: str, filters: dict, query: str = "") -> str | None:
        found = self.index.get(rid)
        if found is None:
            return None
        i, rec = found
        latest = self.decisions()
        comparisons = [self._comparison(rec, c, latest) for c in (rec.get("feedback") or {}).get("comparisons") or ()]
        rhash = record_hash(rec)
        decided = latest.get((rid, None))
        return self.render(
            "record.html", rec=rec, rounds=rounds_with_diffs(rec), comparisons=comparisons, hash=rhash,
            decided=decided, stale=bool(decided and decided.get("hash") != rhash),
            history=[d for key, d in latest.items() if key[0] == rid],
            samples=(rec.get("feedback") or {}).get("samples") or [], filters=filters,
            back=self.links.list(_keep(filters, query)), **self._neighbours(rid, i, filters, query, latest))

    def _neighbours(self, rid: str, i: int, filters: dict, query: str, latest: dict) -> dict:
        if query or any(k in FACETS or k == "review" for k in filters):
            ids = [e.id for e in self.select(filters, query, latest)[1]]
            i = ids.index(rid) if rid in ids else -1
        else:
            ids = [e.id for e in self.index.current]
        keep = _keep(filters, query)
        prev_id = ids[i - 1] if i > 0 else None
        next_id = ids[i + 1] if 0 <= i < len(ids) - 1 else None
        return {"prev": self.links.record(prev_id, keep) if prev_id else None,
                "next": self.links.record(next_id, keep) if next_id else None,
                "position": (i + 1, len(ids)) if i >= 0 else None}

    def _comparison(self, rec: dict, c: dict, latest: dict) -> dict:
        cfg = feedback_settings(self.index.run)
        h = pair_hash(rec, c)
        d = latest.get((rec["id"], c["pair"]))
        return {**c, "label": label(c, cfg), "hash": h, "decided": d, "stale": bool(d and d.get("hash") != h)}

    def principles_page(self) -> str:
        return self.render("principles.html", table=self.principle_stats())

    def principle_stats(self) -> list[dict]:
        """Per principle: rounds drawn, records, flagged records, rounds with a problem, records judged with it."""
        drawn, records, flagged, problems, judged = Counter(), Counter(), Counter(), Counter(), Counter()
        for e in self.index.current:
            ids = e.get("principle")
            records.update(ids)
            if e.get("flag") != ("none",):
                flagged.update(ids)
            problems.update(p.split(":", 1)[0] for p in e.get("problem"))
            drawn.update(e.get("drawn"))
            judged.update(e.get("judged"))
        return sorted(({"id": p, "drawn": drawn[p], "records": records[p], "flagged": flagged[p],
                        "rate": flagged[p] / records[p] if records[p] else 0.0, "problems": problems[p],
                        "problem_rate": problems[p] / drawn[p] if drawn[p] else 0.0, "judged": judged[p]}
                       for p in records.keys() | judged.keys()), key=lambda r: (-r["rate"], -r["problem_rate"], r["id"]))

    def principle_page(self, pid: str, samples: int = 5) -> str | None:
        stats = next((s for s in self.principle_stats() if s["id"] == pid), None)
        if stats is None:
            return None
        reasons, flag_reasons, mine = Counter(), Counter(), []
        for e in self.index.current:
            reasons.update(p.split(":", 1)[1] for p in e.get("problem") if p.split(":", 1)[0] == pid)
            if pid in e.get("principle"):
                flag_reasons.update(f for f in e.get("flag") if f != "none")
                mine.append(e)
        shown = []
        for e in mine:
            rec = self.index.load(e)
            shown += [{"id": rec["id"], "round": r, "href": self.links.record(rec["id"]), "diff": r["diff"]}
                      for r in rounds_with_diffs(rec) if r.get("principle_id") == pid]
            if len(shown) >= samples:
                break
        return self.render("principle.html", pid=pid, stats=stats, reasons=reasons, flag_reasons=flag_reasons,
                           shown=shown[:samples],
                           records_href=self.links.list({"principle": pid}) if stats["records"] else None,
                           flagged_hrefs={f: self.links.list({"principle": pid, "flag": f}) for f in flag_reasons})


def _keep(filters: dict, query: str) -> dict:
    """The filters and the search, as links carry them."""
    return {**filters, **({"q": query} if query else {})}


def pages_of(entries: list) -> int:
    return max(1, -(-len(entries) // PAGE))


def rounds_with_diffs(rec: dict) -> list[dict]:
    """Each round, with its revision as a word diff against the answer before it."""
    out, before = [], rec.get("initial") or ""
    for r in rec.get("rounds") or ():
        out.append({**r, "diff": word_diff(before, r.get("revision") or "")})
        before = r.get("revision") or ""
    return out
