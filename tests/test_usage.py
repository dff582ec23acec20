"""Tokens and cost: counted per call, kept in the cache with each answer, reported by stage and
model (spent and saved), priced, and estimated by --plan before the run."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from cai.cache import Cache
from cai.config import load_pipeline
from cai.generate import generate
from helpers import KEY, Stub, records_by_id, run, write_pipeline


def test_tokens_are_counted_by_stage_and_found_again_as_saved(tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=5)
    first = run(pipeline)
    t = first["tokens"]
    recs = [r[0] for r in records_by_id(tmp_path / "out").values()]
    # The scripted model counts ~4 characters a token (+4 per message): its answers, its prompts.
    assert t["stages"]["respond"]["output"] == sum(len(r["initial"]) // 4 for r in recs)
    assert t["stages"]["respond"]["input"] == sum(len(r["prompt"]) // 4 + 4 for r in recs)
    assert t["total"]["input"] == sum(s["input"] for s in t["stages"].values()) > 0
    assert t["models"] == {"scripted:echo": t["total"]} and t["total"]["saved_input"] == 0
    assert "cost" not in first  # no price given
    shutil.rmtree(tmp_path / "out" / "records")  # every call is in the cache: the rerun spends nothing
    again = run(pipeline)["tokens"]["total"]
    assert (again["input"], again["output"]) == (0, 0)
    assert (again["saved_input"], again["saved_output"]) == (t["total"]["input"], t["total"]["output"])


def test_an_apis_usage_is_what_run_json_counts_and_prices(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    stub = Stub()
    price = {"input_per_mtok": 2.0, "output_per_mtok": 8.0}
    pipeline = write_pipeline(tmp_path, n_prompts=4, backend="openai", model="stub-model", base_url=stub.url,
                              price=price, rounds=1)
    summary = generate(load_pipeline(pipeline))
    total = summary["tokens"]["total"]
    assert [total["input"], total["output"]] == [sum(u[0] for u in stub.usage), sum(u[1] for u in stub.usage)]
    assert summary["cost"]["usd"] == pytest.approx((total["input"] * 2 + total["output"] * 8) / 1e6)
    assert summary["cost"]["models"]["api:stub-model"]["usd"] == summary["cost"]["usd"]
    # The plan made before the run is beside it (estimates assume replies of max_new_tokens).
    est = summary["tokens"]["estimate"]
    assert est["input"] > 0 and summary["tokens"]["actual_over_estimate"]["input"] == round(total["input"] / est["input"], 3)


def test_plan_estimates_tokens_and_cost_before_anything_runs(tmp_path, monkeypatch):
    from cai import plan

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    stub = Stub()
    pipeline = write_pipeline(tmp_path, n_prompts=3, backend="openai", model="stub-model", base_url=stub.url,
                              price={"input_per_mtok": 1.0, "output_per_mtok": 4.0}, rounds=1,
                              sampling={"respond": {"max_new_tokens": 100}, "critique": {"max_new_tokens": 50},
                                        "revise": {"max_new_tokens": 100}})
    p = plan.plan(load_pipeline(pipeline))
    assert stub.requests == 0
    assert p["tokens"]["stages"]["respond"]["output"] == 3 * 100  # every reply as long as allowed
    assert p["tokens"]["stages"]["critique"]["output"] == 3 * 50
    # Later turns carry the earlier replies at that length: the revise step reads more than respond.
    assert p["tokens"]["stages"]["revise"]["input"] > p["tokens"]["stages"]["critique"]["input"] > 3 * 100
    t = p["tokens"]["total"]
    assert p["cost"]["usd"] == pytest.approx((t["input"] * 1 + t["output"] * 4) / 1e6)
    assert f"{t['output']} output tokens" in plan.describe(p)


def test_a_cache_made_before_tokens_were_kept_still_reads_and_learns(tmp_path):
    path = tmp_path / "cache.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE calls (key TEXT PRIMARY KEY, value TEXT NOT NULL, model TEXT NOT NULL, "
               "created REAL NOT NULL) WITHOUT ROWID")
    db.execute("INSERT INTO calls VALUES ('old', ?, 'm', 0)", (json.dumps("an old answer"),))
    db.commit()
    db.close()
    readonly = Cache(path, readonly=True)
    assert readonly.get_many(["old"]) == {"old": "an old answer"} and readonly.found_usage == {}
    readonly.close()
    cache = Cache(path)
    assert cache.get_many(["old"]) == {"old": "an old answer"}
    cache.put_many([("new", "m", "a new answer", [7, 3])])
    assert cache.get_many(["new", "old"]) == {"new": "a new answer", "old": "an old answer"}
    assert cache.found_usage == {"new": [7, 3]}
    cache.close()


def _cli(pipeline, *args):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "cai", "generate", str(pipeline), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OPENAI_API_KEY": KEY})


def test_a_token_budget_stops_before_the_chunk_that_would_cross_it_and_a_higher_one_continues(tmp_path):
    # Replies capped near the stand-in's length (about 40 tokens), so the plan's first estimate is close.
    short = {"sampling": {k: {"max_new_tokens": 40} for k in ("respond", "critique", "revise")}}
    pipeline = write_pipeline(tmp_path, n_prompts=20, chunk_size=5, **short)
    whole = run(write_pipeline(tmp_path / "ref", n_prompts=20, chunk_size=5, **short))["tokens"]["total"]
    per_chunk = (whole["input"] + whole["output"]) / 4
    budget = int(per_chunk * 2.5)  # room for two chunks, not three
    done = _cli(pipeline, "--token-budget", str(budget))
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "budget reached" in last and "--token-budget" in last and "10 prompts are left" in last
    assert "higher --token-budget to continue" in last
    first = json.loads((tmp_path / "out" / "run.json").read_text())
    assert first["status"] == "stopped" and first["counts"]["records"] == 10  # kept, and in the dataset
    spent = first["tokens"]["total"]["input"] + first["tokens"]["total"]["output"]
    assert spent <= budget
    # The same budget again: already spent, nothing more is made.
    assert _cli(pipeline, "--token-budget", str(budget)).returncode == 1
    assert json.loads((tmp_path / "out" / "run.json").read_text())["counts"]["model_calls"] == 0
    finished = _cli(pipeline, "--token-budget", str(budget * 3))
    assert finished.returncode == 0, finished.stderr
    final = json.loads((tmp_path / "out" / "run.json").read_text())
    assert final["status"] == "complete" and final["counts"]["records"] == 20 and final["counts"]["resumed"] == 10
    assert final["tokens"]["total"]["input"] + final["tokens"]["total"]["output"] == whole["input"] + whole["output"] - spent


def test_max_cost_uses_prices_and_needs_one(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    stub = Stub()
    common = dict(backend="openai", model="stub-model", base_url=stub.url, rounds=1, chunk_size=2)
    unpriced = write_pipeline(tmp_path / "u", n_prompts=4, **common)
    done = _cli(unpriced, "--max-cost", "1")
    assert done.returncode == 2 and "no model has a price" in done.stderr and stub.requests == 0
    priced = write_pipeline(tmp_path / "p", n_prompts=8, price={"input_per_mtok": 1000.0, "output_per_mtok": 1000.0},
                            sampling={k: {"max_new_tokens": 16} for k in ("respond", "critique", "revise")}, **common)
    planned = json.loads(_cli(priced, "--plan").stdout)["cost"]["usd"]
    budget = round(planned * 0.6, 4)  # about five prompts' worth of eight
    done = _cli(priced, "--max-cost", str(budget))
    assert done.returncode == 1 and f"--max-cost ${budget:,.4f}" in done.stderr
    summary = json.loads((tmp_path / "p" / "out" / "run.json").read_text())
    assert summary["status"] == "stopped" and 0 < summary["cost"]["usd"] <= budget
    assert 0 < summary["counts"]["records"] < 8
