"""`engine: ray` on a real two-node Ray cluster (ray.cluster_utils.Cluster on this machine).

Each node offers one CPU and workers ask for half, so nothing can deadlock on two
cores; every test has a hard timeout, so a hang fails instead of stalling CI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import helpers
from helpers import KEY, CrashOnce, SeededEcho, Stub, records_by_id, write_pipeline

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(300)
STORE = 200 * 2**20  # Ray's default object store is 30 % of RAM per node: far more than blocks need
KEY_ENV = "CAI_RAY_TEST_KEY"  # in the nodes' environment; NODELESS_ENV is only in the driver's
NODELESS_ENV = "CAI_RAY_TEST_DRIVER_ONLY_KEY"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    cloudpickle.register_pickle_by_value(helpers)  # the test backends travel to the workers by value
    spools = tmp_path_factory.mktemp("spools")
    saved = {k: os.environ.get(k) for k in ("CAI_SPOOL_DIR", KEY_ENV)}
    os.environ.update(CAI_SPOOL_DIR=str(spools), **{KEY_ENV: KEY})  # the nodes inherit this environment
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": STORE})
    c.add_node(num_cpus=1, object_store_memory=STORE)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        c.shutdown()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _ray(cluster, **fields) -> dict:
    return {"engine": "ray", "ray": {"address": cluster.address, "cpus_per_worker": 0.5, "start_timeout": 120,
                                     **fields}}


def _generate(pipeline, backend=None, judge=None, **overrides) -> dict:
    from cai.config import load_pipeline
    from cai.generate import generate

    return generate(load_pipeline(pipeline, **overrides), str(pipeline), backend=backend, judge=judge)


def _content(out: Path) -> dict:
    """Records by id without their timings (one record per id is asserted by the callers)."""
    return {k: [{f: v for f, v in r.items() if f != "created"} for r in recs] for k, recs in records_by_id(out).items()}


def _rows(out: Path) -> dict:
    rows = {}
    for folder in ("dataset", "sft"):
        for f in sorted((out / folder).glob("*.parquet")):
            rows[f"{folder}/{f.stem}"] = sorted(pq.read_table(f).to_pylist(), key=lambda r: json.dumps(r, sort_keys=True))
    return rows


def _nodes_used(summary: dict) -> set:
    return {n for w in summary["engine"]["workers"] for n in w["nodes"] if w["blocks"]}


@pytest.mark.parametrize("setup", ["slcai-greedy", "feedback-sampled"])
def test_a_ray_run_gives_the_local_runs_records_and_dataset(cluster, tmp_path, setup):
    fields = {} if setup == "slcai-greedy" else {
        "feedback": {"enabled": True, "pairs": "both", "principles": 2},
        "sampling": {"respond": {"temperature": 0.9, "max_new_tokens": 40}}}
    # With feedback, a judge of its own that prefers the shorter answer travels to the workers too.
    judge = helpers.FakeJudge(lambda a, b: (-len(a) / 50, -len(b) / 50)) if "feedback" in fields else None
    pipeline = write_pipeline(tmp_path, n_prompts=24, **fields)
    local = _generate(pipeline, SeededEcho("echo"), judge, out=str(tmp_path / "local"))
    pipeline = write_pipeline(tmp_path, n_prompts=24, **fields, **_ray(cluster))
    remote = _generate(pipeline, SeededEcho("echo"), judge, out=str(tmp_path / "ray"))

    a, b = _content(tmp_path / "local"), _content(tmp_path / "ray")
    assert len(b) == 24 and all(len(v) == 1 for v in b.values())
    assert a == b
    if setup == "feedback-sampled":  # seeds reached the workers' backends, per example and stage
        first = next(iter(b.values()))[0]
        assert "[seed " in first["initial"] and "[seed -" not in first["initial"]
        assert remote["judge"]["identity"] == "scripted:judge" and remote["counts"]["judge_calls"] > 0
    assert _rows(tmp_path / "local") == _rows(tmp_path / "ray") != {}
    assert remote["counts"]["model_calls"] == local["counts"]["model_calls"] > 0
    assert remote["counts"]["pairs"] == local["counts"]["pairs"]
    for key in ("total", "stages", "models"):  # tokens, summed over workers
        assert remote["tokens"][key] == local["tokens"][key]
    assert remote["engine"]["kind"] == "ray" and remote["engine"]["nodes"] == 2
    assert len(_nodes_used(remote)) == 2  # both nodes took blocks
    assert sum(w["examples"] for w in remote["engine"]["workers"]) == 24
    assert local["engine"] == {"kind": "local"}


def test_a_worker_killed_mid_block_is_restarted_and_its_block_retried(cluster, tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=16)
    local = _generate(pipeline, helpers.ScriptedBackend("echo"), out=str(tmp_path / "local"))
    marker = tmp_path / "crashed"
    pipeline = write_pipeline(tmp_path, n_prompts=16, **_ray(cluster))
    remote = _generate(pipeline, CrashOnce(str(marker), at=3), out=str(tmp_path / "ray"))

    assert marker.exists()  # a worker process really died (at its third model call)
    assert remote["status"] == "complete" and remote["counts"]["failed"] == 0
    assert _content(tmp_path / "ray") == _content(tmp_path / "local")  # nothing lost, nothing twice
    # The calls the dead process had committed to its spool were found by its restarted self.
    c = remote["counts"]
    assert c["cache_hits"] > 0 and c["model_calls"] + c["cache_hits"] == local["counts"]["model_calls"]


def _cli(pipeline: Path, *args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cai", "generate", str(pipeline), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def test_a_killed_driver_rerun_makes_exactly_the_calls_not_yet_made(cluster, tmp_path):
    from cai import spool

    api = {"backend": "openai", "model": "stub-model", "api_key_env": KEY_ENV, "concurrency": 4, "rounds": 1}
    reference = Stub(latency=0.0)
    ref = write_pipeline(tmp_path / "ref", n_prompts=40, base_url=reference.url, **api)
    _generate(ref)
    total = reference.requests
    assert total == len(set(reference.bodies)) == 40 * 3

    stub = Stub(latency=0.15)
    pipeline = write_pipeline(tmp_path / "run", n_prompts=40, base_url=stub.url, **api, **_ray(cluster))
    first = _cli(pipeline)
    deadline = time.time() + 120
    while stub.requests < total // 2:
        assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else "slow"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(3)  # its workers die with it
    made_before = stub.requests
    out = tmp_path / "run" / "out"
    kept = spool.stored(out)
    assert 0 < len(kept) < total

    second = _cli(pipeline)
    _, err = second.communicate(timeout=240)
    assert second.returncode == 0, err
    assert stub.requests - made_before == total - len(kept)  # exactly the calls not yet made
    recs = records_by_id(out)
    assert sorted(recs) == [f"p-{i:05d}" for i in range(40)] and all(len(v) == 1 for v in recs.values())
    summary = json.loads((out / "run.json").read_text())
    assert summary["status"] == "complete" and summary["counts"]["model_calls"] == total - len(kept)
    assert not (spool.root() / spool.run_key(out)).exists()  # spools are dropped once the cache holds them
    # The whole API budget (concurrency 4) was shared by the two workers, not given to each.
    assert 2 < stub.max_in_flight <= 4
    assert sorted(w["backend_stats"]["policy"]["requests"] for w in summary["engine"]["workers"]) != []
    assert summary["backend_stats"]["requests"] == total - len(kept)


def test_an_unreachable_address_is_one_line_and_exit_2(tmp_path):
    pipeline = write_pipeline(tmp_path, n_prompts=2)
    proc = _cli(pipeline, "--engine", "ray", "--ray-address", "127.0.0.1:9")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no Ray cluster at 127.0.0.1:9" in lines[0] and "ray start --head" in lines[0]
    assert not (tmp_path / "out" / "records").exists()


def test_a_bad_engine_setting_names_its_field(tmp_path):
    from cai.config import load_pipeline
    from cai.errors import InputError

    pipeline = write_pipeline(tmp_path, n_prompts=2, engine="spark")
    with pytest.raises(InputError) as exc:
        load_pipeline(pipeline)
    assert exc.value.problems[0].field == "engine"
    with pytest.raises(InputError) as exc:
        load_pipeline(write_pipeline(tmp_path, n_prompts=2), ray_address="http://x")
    assert exc.value.problems[0].field == "--ray-address"


def test_a_node_without_the_backends_key_stops_the_run_with_one_line(cluster, tmp_path, monkeypatch):
    from cai.errors import InputError

    monkeypatch.setenv(NODELESS_ENV, KEY)  # the driver has it; the nodes' environment does not
    stub = Stub()
    pipeline = write_pipeline(tmp_path, n_prompts=4, backend="openai", model="stub-model", base_url=stub.url,
                              api_key_env=NODELESS_ENV, **_ray(cluster))
    with pytest.raises(InputError) as exc:
        _generate(pipeline)
    message = str(exc.value.problems[0].message)
    assert f"environment variable {NODELESS_ENV} is not set" in message and "every node" in message
    assert stub.requests == 0


def test_plan_is_the_same_for_either_engine_and_touches_no_cluster(tmp_path):
    from cai import plan
    from cai.config import load_pipeline

    pipeline = write_pipeline(tmp_path, n_prompts=6)
    local = plan.plan(load_pipeline(pipeline))
    remote = plan.plan(load_pipeline(pipeline, engine="ray", ray_address="127.0.0.1:9"))  # nothing listens there
    assert local == remote and local["model_calls"] > 0


@pytest.mark.slow
def test_the_embedded_model_on_ray_gives_the_local_runs_records(cluster, tmp_path):
    fields = {"rounds": 1, "threads": 1, "feedback": {"enabled": True, "principles": 1},
              "sampling": {"respond": {"temperature": 0.8, "max_new_tokens": 32},
                           "critique": {"max_new_tokens": 24}, "revise": {"max_new_tokens": 32}}}
    pipeline = write_pipeline(tmp_path, n_prompts=6, backend="transformers", model="embedded", **fields)
    _generate(pipeline, out=str(tmp_path / "local"))
    pipeline = write_pipeline(tmp_path, n_prompts=6, backend="transformers", model="embedded", **fields,
                              **_ray(cluster))
    remote = _generate(pipeline, out=str(tmp_path / "ray"))
    assert len(_nodes_used(remote)) == 2
    a, b = _content(tmp_path / "local"), _content(tmp_path / "ray")
    assert a.keys() == b.keys() and len(b) == 6
    for k in a:
        x, y = a[k][0], b[k][0]
        # Text is identical, sampled answers included; judge probabilities move in the 7th digit with
        # the batch's padding, as they do between local runs with another chunk_size.
        assert (x["initial"], x["rounds"], x["final"], x["flags"]) == (y["initial"], y["rounds"], y["final"], y["flags"])
        for cx, cy in zip(x["feedback"]["comparisons"], y["feedback"]["comparisons"]):
            assert (cx["a"], cx["b"], cx.get("chosen")) == (cy["a"], cy["b"], cy.get("chosen"))
            assert cx["p_a"] == pytest.approx(cy["p_a"], abs=1e-4)


def test_workers_follow_the_gpus_and_share_an_apis_budget(monkeypatch, tmp_path):
    from cai import cluster
    from cai.config import load_pipeline

    gpu_nodes = [{"NodeID": "a", "Resources": {"CPU": 32, "GPU": 8}}, {"NodeID": "b", "Resources": {"CPU": 16, "GPU": 4}}]
    monkeypatch.setattr(cluster, "_nodes", lambda: gpu_nodes)
    vllm = load_pipeline(write_pipeline(tmp_path / "v", backend="vllm", model="embedded", tensor_parallel_size=2,
                                        **_ray_fields()))
    assert cluster.plan_workers(vllm) == (6, 2)  # TP within a worker on one node: 8/2 + 4/2 engines
    vllm.policy.options.data_parallel_size = 2
    assert cluster.plan_workers(vllm) == (3, 4)  # vLLM's own DP stays inside the worker too
    monkeypatch.setattr(cluster, "_nodes", lambda: [{"NodeID": n, "Resources": {"CPU": 2}} for n in "abc"])
    assert cluster.plan_workers(vllm) == (3, 0)  # no GPUs: one worker per node
    api = load_pipeline(write_pipeline(tmp_path / "a", backend="openai", model="m", concurrency=16, **_ray_fields()))
    assert [cluster._share(api, 3, i).policy.options.concurrency for i in range(3)] == [6, 5, 5]
    api.policy.options.concurrency = 2
    assert cluster.plan_workers(api) == (2, 0)  # never more workers than requests allowed in flight


def _ray_fields() -> dict:
    return {"engine": "ray", "ray": {"address": "127.0.0.1:9"}}


def test_a_budget_stops_a_ray_run_between_blocks_and_a_higher_one_continues(cluster, tmp_path):
    short = {"sampling": {k: {"max_new_tokens": 40} for k in ("respond", "critique", "revise")}}
    whole = _generate(write_pipeline(tmp_path / "ref", n_prompts=24, **short), helpers.ScriptedBackend("echo"))
    total = whole["tokens"]["total"]["input"] + whole["tokens"]["total"]["output"]
    pipeline = write_pipeline(tmp_path / "run", n_prompts=24, **short, **_ray(cluster))
    first = _generate(pipeline, helpers.ScriptedBackend("echo"), token_budget=int(total * 0.6))
    spent = first["tokens"]["total"]["input"] + first["tokens"]["total"]["output"]
    assert first["status"] == "stopped" and "budget reached" in first["stopped"]
    assert 0 < first["counts"]["records"] < 24 and spent <= total * 0.6, first["stopped"]
    final = _generate(pipeline, helpers.ScriptedBackend("echo"), token_budget=total * 2)
    assert final["status"] == "complete" and final["counts"]["records"] == 24
    assert final["counts"]["resumed"] == first["counts"]["records"]
