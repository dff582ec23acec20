"""`cai review`: decisions in review.jsonl and how the dataset honours them, the server's safety rules,
live reading of a running generate, damaged shards, the static export, and the CLI's errors."""

from __future__ import annotations

import json
import multiprocessing
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from review_helpers import XSS_ID, Served, decisions_in, rerun, review_run, serving

from cai import card, diff
from cai.records import RecordStore
from cai.review import decisions, export, rebuild
from cai.review.decisions import pair_hash, record_hash


def rows_of(out: Path, folder: str = "dataset") -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for f in sorted((out / folder).glob("*.parquet")):
        for row in pq.read_table(f).to_pylist():
            found.setdefault(row["id"], []).append(row)
    return found


def current(out: Path) -> dict[str, dict]:
    fp = json.loads((out / "run.json").read_text())["fingerprint"]
    return {r["id"]: r for r in RecordStore(out / "records", readonly=True).current(fp)}


def decide(out: Path, rec: dict, decision: str, pair: dict | None = None, **extra) -> dict:
    h = pair_hash(rec, pair) if pair else record_hash(rec)
    return decisions.append(out, {"who": "t", "record": rec["id"], "pair": pair["pair"] if pair else None,
                                  "hash": h, "decision": decision, "swap": False, "chosen": None, "note": None, **extra})


def test_slcai_decisions_reach_pairs_and_sft_and_later_lines_win(tmp_path):
    out = review_run(tmp_path)
    recs = current(out)
    flagged = [r for r in recs.values() if r["flags"]]
    assert flagged and all(r["flags"] == ["empty_critique"] for r in flagged)
    before = rows_of(out)
    assert not any(r["id"] in before for r in flagged)
    clean = sorted(i for i, r in recs.items() if not r["flags"])
    accepted_flagged, rejected, edited, swapped, flip = flagged[0]["id"], clean[0], clean[1], clean[2], clean[3]
    decide(out, recs[accepted_flagged], "accept")
    decide(out, recs[rejected], "reject")
    decide(out, recs[edited], "edit", chosen="A careful, edited answer.", note="fixed by hand")
    decide(out, recs[swapped], "accept", swap=True)
    decide(out, recs[flip], "reject")
    decide(out, recs[flip], "accept")  # a second tab, later: this one applies

    run = rebuild.rebuild(out)
    pairs, sft = rows_of(out), rows_of(out, "sft")
    assert rejected not in pairs and rejected not in sft
    assert pairs[accepted_flagged][0]["reviewed"] == "accepted"  # a person's accept overrides the flag
    assert pairs[accepted_flagged][0]["chosen"][-1]["content"] == recs[accepted_flagged]["final"]
    assert pairs[edited][0]["chosen"][-1]["content"] == "A careful, edited answer."
    assert pairs[edited][0]["rejected"][-1]["content"] == recs[edited]["initial"]
    assert sft[edited][0]["messages"][-1]["content"] == "A careful, edited answer."
    assert pairs[swapped][0]["chosen"][-1]["content"] == recs[swapped]["initial"]
    assert pairs[swapped][0]["rejected"][-1]["content"] == recs[swapped]["final"]
    assert pairs[swapped][0]["reviewed"] == "edited"
    assert pairs[flip][0]["reviewed"] == "accepted"
    untouched = clean[4]
    assert pairs[untouched][0]["reviewed"] is None
    r = run["counts"]["review"]
    assert (r["accepted"], r["edited"], r["rejected"], r["reviewed"], r["stale"]) == (2, 2, 1, 5, 0)
    assert r["sft"]["rejected"] == 1 and r["sft"]["edited"] == 2
    assert run["counts"]["pairs"] == len(before) - 1 + 1  # one rejected, one flagged brought back

    # `cai generate` again honours the same decisions, with no model call.
    summary = rerun(tmp_path)
    assert summary["counts"]["model_calls"] == 0
    assert rows_of(out) == pairs and summary["counts"]["review"] == r
    text = str(card.build_card(summary, "", {}, [], "org/x", None, "apache-2.0", {}))
    assert "reviewed by a person (`cai review`): 5 preference rows (accepted 2, edited 2, rejected and left out 1)" in text


def test_pair_decisions_with_ai_feedback(tmp_path):
    out = review_run(tmp_path, n=8, feedback={"enabled": True, "pairs": "both", "samples": 2})
    recs = current(out)
    pairs = rows_of(out)
    multi = [i for i, rows in pairs.items() if len(rows) >= 2]
    assert len(multi) >= 2
    one, whole = recs[multi[0]], recs[multi[1]]
    comps = {c["pair"]: c for c in one["feedback"]["comparisons"]}
    dropped, flipped = [r["pair"] for r in pairs[one["id"]][:2]]
    decide(out, one, "reject", pair=comps[dropped])
    decide(out, one, "accept", pair=comps[flipped], swap=True)
    decide(out, whole, "reject")
    rebuild.rebuild(out)
    after = rows_of(out)
    assert whole["id"] not in after and whole["id"] not in rows_of(out, "sft")
    kept = {r["pair"]: r for r in after[one["id"]]}
    assert dropped not in kept and one["id"] in rows_of(out, "sft")
    old = next(r for r in pairs[one["id"]] if r["pair"] == flipped)
    new = kept[flipped]
    assert new["chosen"] == old["rejected"] and new["rejected"] == old["chosen"]
    assert new["chosen_prob"] == pytest.approx(1 - old["chosen_prob"]) and new["margin"] == pytest.approx(-old["margin"])
    assert new["p_first"] == pytest.approx(1 - old["p_second"]) and new["reviewed"] == "edited"

    # Record and pair decisions: the later applies. A record rejected after its pair was accepted loses it;
    # a pair accepted after its record was rejected stays, alone.
    third = recs[multi[2]] if len(multi) > 2 else None
    decide(out, one, "reject")
    if third:
        decide(out, third, "reject")
        decide(out, third, "accept", pair={c["pair"]: c for c in third["feedback"]["comparisons"]}[pairs[third["id"]][0]["pair"]])
    rebuild.rebuild(out)
    after = rows_of(out)
    assert one["id"] not in after
    if third:
        assert [r["pair"] for r in after[third["id"]]] == [pairs[third["id"]][0]["pair"]]
        assert after[third["id"]][0]["reviewed"] == "accepted"


def test_a_decision_goes_stale_when_the_judge_flips_its_pair(tmp_path):
    from cai import dataset
    from cai.config import FeedbackConfig

    out = review_run(tmp_path, n=4, feedback={"enabled": True})
    recs = current(out)
    rec = next(r for r in recs.values() if (r.get("feedback") or {}).get("comparisons"))
    comp = rec["feedback"]["comparisons"][0]
    decide(out, rec, "accept", pair=comp, swap=True)  # "the judge got this one backwards"
    other = next(r for r in recs.values() if r["id"] != rec["id"] and (r.get("feedback") or {}).get("comparisons"))
    decide(out, other, "edit", chosen="hand-written")
    flipped = json.loads(json.dumps(list(recs.values())))
    for r in flipped:  # a re-run whose judge now prefers the other answer in every pair
        for c in (r.get("feedback") or {}).get("comparisons") or ():
            c.update(p_a=1 - c["p_a"], p_first=1 - c["p_second"], p_second=1 - c["p_first"])
    review = decisions.Review.of(out)
    built = dataset.build(flipped, tmp_path / "flipped", 0.25, FeedbackConfig(enabled=True), review)
    assert built["review"]["stale"] == 2 and built["review"]["reviewed"] == 0
    assert sorted(built["review"]["stale_items"]) == sorted([f"{rec['id']} ({comp['pair']})", other["id"]])


def test_a_decision_on_changed_text_is_stale_and_not_applied(tmp_path):
    out = review_run(tmp_path)
    recs = current(out)
    target = sorted(i for i, r in recs.items() if not r["flags"])[0]
    decide(out, recs[target], "reject")
    first = rerun(tmp_path)
    assert target not in rows_of(out) and first["counts"]["review"]["rejected"] == 1
    # Edit the constitution: every revision changes, so the reviewed text is gone.
    doc = yaml.safe_load((tmp_path / "constitution.yaml").read_text())
    for p in doc["principles"]:
        p["revision"] = p["revision"].replace("Rewrite", "Please rewrite")
    (tmp_path / "constitution.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    second = rerun(tmp_path)
    r = second["counts"]["review"]
    assert r["stale"] == 1 and r["rejected"] == 0 and r["stale_items"] == [target]
    assert target in rows_of(out)
    assert any("stale" in w and target in w for w in second["warnings"])
    report = diff.compare(out)
    assert report["review"]["before"]["rejected"] == 1 and report["review"]["after"]["stale"] == 1
    assert "reviewed rows: 1 (accepted 0, edited 0, rejected 1) -> 0 (accepted 0, edited 0, rejected 0, 1 stale)" \
        in diff.render(report)


def _append_many(out, tag, n):
    for i in range(n):
        decisions.append(out, {"who": tag, "record": f"{tag}-{i}", "pair": None, "hash": "0" * 16,
                               "decision": "accept", "note": "x" * 3000})


def test_concurrent_writers_keep_every_line(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(tmp_path, tag, 150)) for tag in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    lines, bad = decisions.read(tmp_path)
    assert not bad and len(lines) == 450
    for tag in "abc":  # each writer's lines whole and in its own order
        assert [d["record"] for d in lines if d["who"] == tag] == [f"{tag}-{i}" for i in range(150)]


def _request(url, data=None, headers=None, method=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _raw(port, text: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(text.encode())
        return b"".join(iter(lambda: s.recv(65536), b"")).decode(errors="replace")


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.fixture()
def served(tmp_path):
    with serving(tmp_path, who="ada") as both:
        yield both


def test_writes_need_token_host_and_origin_and_only_review_jsonl_changes(served):
    out, s = served
    before = _tree(out)
    status, page = _request(s.url + "record?id=r-000")
    assert status == 200
    token = page.split('name="cai-token" content="')[1].split('"')[0]
    rec = current(out)["r-000"]
    body = json.dumps({"record": "r-000", "hash": record_hash(rec), "decision": "reject"}).encode()
    good = {"Content-Type": "application/json", "X-CAI-Token": token, "Origin": s.url.rstrip("/")}
    assert _request(s.url + "api/decide", body, {**good, "X-CAI-Token": "guess"})[0] == 403
    assert _request(s.url + "api/decide", body, {k: v for k, v in good.items() if k != "Origin"})[0] == 403
    assert _request(s.url + "api/decide", body, {**good, "Origin": "http://evil.example"})[0] == 403
    # A DNS-rebinding page reaches 127.0.0.1 under its own name: refused, reads included.
    rebound = _raw(s.port, f"GET / HTTP/1.1\r\nHost: evil.example:{s.port}\r\nConnection: close\r\n\r\n")
    assert rebound.startswith("HTTP/1.0 421") or rebound.startswith("HTTP/1.1 421")
    assert "r-000" not in rebound
    assert _request(s.url + "api/decide", json.dumps({"record": "nope", "hash": "0" * 16, "decision": "accept"}).encode(),
                    good)[0] == 400
    # A page loaded before a generate rewrote the record: its decision would be stale on arrival.
    old = json.dumps({"record": "r-000", "hash": "0" * 16, "decision": "reject"}).encode()
    assert _request(s.url + "api/decide", old, good)[0] == 409
    no_pair = json.dumps({"record": "r-000", "pair": "samples:1-2", "hash": record_hash(rec), "decision": "reject"})
    assert _request(s.url + "api/decide", no_pair.encode(), good)[0] == 400
    assert decisions_in(out) == []
    status, answer = _request(s.url + "api/decide", body, good)
    assert status == 200 and json.loads(answer)["who"] == "ada"
    for path in ("principles", "principle?id=harm", "?flag=empty_critique", "?q=topic"):
        assert _request(s.url + path)[0] == 200
    after = _tree(out)
    changed = {k for k in after.keys() | before.keys() if after.get(k) != before.get(k)}
    assert changed == {"review.jsonl"}
    [line] = decisions_in(out)
    assert (line["record"], line["decision"], line["who"], line["hash"]) == ("r-000", "reject", "ada", record_hash(rec))


def test_paths_that_leave_the_run_are_refused(served, tmp_path):
    out, s = served
    (tmp_path / "secret.txt").write_text("TOP-SECRET")
    leaving = ("/../secret.txt", "/%2e%2e/%2e%2e/etc/passwd", "/record/..%2f..%2fsecret.txt", "/..%5csecret.txt",
               "/%252e%252e/secret.txt")
    for path in (*leaving, "/record?id=../../secret.txt", "/run.json", "/records/shard-000000.jsonl", "/review.jsonl"):
        reply = _raw(s.port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\nConnection: close\r\n\r\n")
        status = int(reply.split()[1])
        # Paths with `..` are refused outright; other paths are not pages (no file is served from disk).
        assert status == (400 if path in leaving else 404), (path, reply[:200])
        assert "TOP-SECRET" not in reply and "root:" not in reply and '"fingerprint"' not in reply
    # Odd input is a 400, never a 500 or a dropped connection.
    assert _request(s.url + "?page=%C2%B2")[0] == 200
    reply = _raw(s.port, f"POST /api/decide HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\nOrigin: {s.url.rstrip('/')}\r\n"
                         "Content-Length: abc\r\nConnection: close\r\n\r\n")
    assert reply.split()[1] == "403"  # no token: refused before the body is read


def test_new_records_of_a_running_generate_appear_on_reload_and_no_lock_is_taken(tmp_path):
    out = review_run(tmp_path, n=6)
    s = Served(out)
    try:
        first = _request(s.url)[1]
        assert "7 records" in first
        # A generate on the same run works while the server is up (the server holds no lock) ...
        with open(tmp_path / "prompts.jsonl", "a") as fh:
            fh.write(json.dumps({"id": "late-1", "prompt": "A question that came later?", "category": "late"}) + "\n")
        rerun(tmp_path)
        # ... and its new records show on the next reload.
        again = _request(s.url)[1]
        assert "8 records" in again and "late-1" in again
        assert _request(s.url + "record?id=late-1")[0] == 200
    finally:
        s.stop()


def test_a_damaged_shard_is_shown_not_fatal(tmp_path):
    out = review_run(tmp_path, n=6)
    fp = json.loads((out / "run.json").read_text())["fingerprint"]
    bad = out / "records" / "shard-000900.jsonl"
    bad.write_text(json.dumps({"id": "z-1", "prompt": "hidden", "fingerprint": fp}) + "\n{\"id\": \"z-2\", \"pro\n")
    s = Served(out)
    try:
        status, page = _request(s.url)
        assert status == 200 and 'data-damaged="shard-000900.jsonl"' in page and "line 2" in page
        assert "r-000" in page and "z-1" not in page
    finally:
        s.stop()
    assert bad.exists()  # the viewer moves nothing; the next generate quarantines it


def test_a_shard_quarantined_and_rewritten_under_its_name_is_read_again(tmp_path):
    out = review_run(tmp_path, n=6)
    last = sorted((out / "records").glob("shard-*.jsonl"))[-1]
    # A line of another run that looks whole is skipped, as generate skips it: no banner.
    with open(last, "a") as fh:
        fh.write('{"id": broken, "fingerprint": "elsewhere"}\n')
    s = Served(out)
    try:
        page = _request(s.url)[1]
        assert "data-damaged" not in page and "7 records" in page
        with open(last, "a") as fh:  # now a torn line: the shard is damaged
            fh.write('{"id": "r-000", "prompt": "torn\n')
        page = _request(s.url)[1]  # a shard that changed on disk is read again
        assert 'data-damaged="' + last.name + '"' in page and "r-000" not in page
        summary = rerun(tmp_path)  # generate quarantines it and writes the records again, same shard name
        assert summary["counts"]["records"] == 7 and summary["counts"]["quarantined"] == 1
        assert (out / "records" / "quarantine").is_dir() and last.exists()
        page = _request(s.url)[1]
        assert "data-damaged" not in page and "7 records" in page and "r-000" in page
    finally:
        s.stop()


def test_unreadable_decision_lines_are_skipped_and_named(tmp_path):
    out = review_run(tmp_path, n=4)
    rec = current(out)["r-000"]
    with open(out / "review.jsonl", "w") as fh:
        fh.write(json.dumps({"record": "r-000", "decision": "accept", "pair": ["a"], "hash": "x"}) + "\n")
        fh.write(json.dumps({"record": "r-000", "decision": "edit", "chosen": None, "hash": "x"}) + "\n")
        fh.write("{not json\n")
    decide(out, rec, "reject")
    run = rebuild.rebuild(out)
    assert run["counts"]["review"]["unreadable_lines"] == 3 and run["counts"]["review"]["rejected"] == 1
    assert any("3 lines of review.jsonl could not be read" in w for w in run["warnings"])
    assert "r-000" not in rows_of(out)


def test_export_is_self_contained_escaped_and_never_overwrites_foreign_folders(tmp_path):
    out = review_run(tmp_path)
    rec = current(out)["r-002"]
    decide(out, rec, "edit", chosen="edited by hand")
    dest = tmp_path / "share"
    n = export.export(out, dest)
    pages = {p.name: p.read_text() for p in dest.glob("*.html")}
    assert n == len(pages) and "index.html" in pages and "principles.html" in pages
    every = "".join(pages.values())
    assert "http://" not in every and "https://" not in every
    assert not re.search(r"<(img|link|iframe)\b|<script[^>]*\bsrc=", every)  # no assets to fetch
    assert 'name="cai-token"' not in every and "data-decide=" not in every  # read-only: no decision controls
    xss = pages[export.ExportLinks().record(XSS_ID)]
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in xss and "<script>window.__xss" not in xss
    assert "x/&lt;s&gt;&amp;&#34;#?%ü" in xss and "x/<s>" not in every
    assert "edited by hand" in pages[export.ExportLinks().record("r-002")]
    for name, html in pages.items():  # every link lands on an exported page
        for href in re.findall(r'href="([^"#]+)"', html):
            assert href in pages, (name, href)
    export.export(out, dest)  # an earlier export is replaced
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "cai", "review", str(out), "--export", str(foreign)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "not empty and not an earlier export" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and (foreign / "notes.txt").read_text() == "mine"


def test_export_of_an_ai_feedback_run_links_only_to_pages_it_has(tmp_path):
    out = review_run(tmp_path, n=2, rounds=1, feedback={"enabled": True, "principles": 4})
    recs = current(out)
    judged = {p for r in recs.values() for c in r["feedback"]["comparisons"] for p in c["principle_ids"]}
    drawn = {x["principle_id"] for r in recs.values() for x in r["rounds"]}
    assert judged - drawn  # a principle only the judge used: it has a page too
    pages = {p.name: p.read_text() for p in (export.export(out, tmp_path / "share") and (tmp_path / "share")).glob("*.html")}
    for name, html in pages.items():
        for href in re.findall(r'href="([^"#]+)"', html):
            assert href in pages, (name, href)
    only_judged = sorted(judged - drawn)[0]
    page = pages[export.ExportLinks().principle(only_judged)]
    assert "the judge compared answers under it in" in page


def test_cli_errors_are_one_line_exit_2(tmp_path):
    out = review_run(tmp_path, n=3)
    cases = [[str(tmp_path / "nowhere")], [str(tmp_path)], [str(out), "--host", "nosuchhost.invalid", "--port", "0"]]
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    cases.append([str(out), "--port", str(taken.getsockname()[1])])
    try:
        for args in cases:
            proc = subprocess.run([sys.executable, "-m", "cai", "review", *args], capture_output=True, text=True,
                                  timeout=60)
            assert proc.returncode == 2, (args, proc.stderr)
            assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    finally:
        taken.close()
    assert "port in use" in proc.stderr


def test_binding_beyond_loopback_warns(tmp_path):
    out = review_run(tmp_path, n=3)
    proc = subprocess.Popen([sys.executable, "-m", "cai", "review", str(out), "--host", "0.0.0.0", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://0.0.0.0:")
    finally:
        proc.terminate()
        err = proc.communicate(timeout=30)[1]
    assert "warning: serving on 0.0.0.0: anyone who can reach this address can read the run's records" in err


def test_filters_counts_search_and_paging_on_a_large_run(tmp_path):
    out = tmp_path / "big"
    (out / "records").mkdir(parents=True)
    fp = "f" * 16
    n = 12_000
    with open(out / "records" / "shard-000000.jsonl", "w") as fh:
        for i in range(n):
            rounds = [{"round": 1, "principle_id": f"p{i % 7}", "critique": "c", "revision": f"rev {i}",
                       "critique_problem": "empty_critique" if i % 10 == 0 else None, "revision_problem": None}]
            fh.write(json.dumps({"id": f"b-{i:05d}", "prompt": f"prompt {i} needle{i % 1000}", "category": f"c{i % 3}",
                                 "initial": "init", "final": f"rev {i}", "rounds": rounds, "fingerprint": fp,
                                 "flags": ["empty_critique"] if i % 10 == 0 else []}) + "\n")
    (out / "run.json").write_text(json.dumps({"fingerprint": fp, "status": "running"}))
    s = Served(out)
    try:
        start = time.perf_counter()
        page = _request(s.url + "?flag=empty_critique&principle=p3")[1]
        # i % 10 == 0 and i % 7 == 3: one id in 70
        assert f"of {len(range(10, n, 70))}" in page and page.count('<tr data-item') == 50
        second = _request(s.url + "?flag=empty_critique&principle=p3&page=2")[1]
        assert "records 51–100" in second
        found = _request(s.url + "?q=NEEDLE999")[1]  # case-insensitive, in the prompt
        assert "records 1–12 of 12" in found and "b-00999" in found and "b-01000" not in found
        assert time.perf_counter() - start < 60
    finally:
        s.stop()


@pytest.mark.slow
def test_review_of_a_real_embedded_model_run(tmp_path):
    """The embedded model's own records: shown escaped with their word diff, edited through the server,
    and the edit honoured by `cai review --apply` and by `cai generate` run again."""
    import html

    from markupsafe import escape

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "run"
    gen = [sys.executable, "-m", "cai", "generate", "--limit", "2", "--rounds", "1", "--out", str(out)]
    done = subprocess.run(gen, cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    recs = current(out)
    red = next(r for r in recs.values() if r["rounds"])
    benign = next(r for r in recs.values() if r.get("kept"))
    s = Served(out, who="real")
    try:
        page = _request(s.url + "record?id=" + urllib.request.quote(red["id"]))[1]
        assert str(escape(red["prompt"])) in page and str(escape(red["rounds"][0]["critique"])) in page
        added = re.findall(r"<ins>(.*?)</ins>", page, re.S)
        assert added and all(html.unescape(a) in red["rounds"][0]["revision"] for a in added)
        token = page.split('name="cai-token" content="')[1].split('"')[0]
        body = json.dumps({"record": benign["id"], "hash": record_hash(benign), "decision": "edit",
                           "chosen": "An answer a person wrote."}).encode()
        status, _ = _request(s.url + "api/decide", body, {"Content-Type": "application/json", "X-CAI-Token": token,
                                                          "Origin": s.url.rstrip("/")})
        assert status == 200
    finally:
        s.stop()
    applied = subprocess.run([sys.executable, "-m", "cai", "review", str(out), "--apply"], cwd=root,
                             capture_output=True, text=True, timeout=600)
    assert applied.returncode == 0, applied.stderr[-2000:]
    assert applied.stdout.strip() == str(out / "dataset") and "edited 0" in applied.stderr  # SFT only: kept answer
    sft = rows_of(out, "sft")
    assert sft[benign["id"]][0]["messages"][-1]["content"] == "An answer a person wrote."
    assert sft[benign["id"]][0]["reviewed"] == "edited"
    assert all(rows[0]["reviewed"] is None for i, rows in sft.items() if i != benign["id"])
    again = subprocess.run(gen, cwd=root, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["model_calls"] == 0 and run["counts"]["review"]["sft"]["edited"] == 1
    assert rows_of(out, "sft")[benign["id"]][0]["messages"][-1]["content"] == "An answer a person wrote."
