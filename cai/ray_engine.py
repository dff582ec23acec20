"""`engine: ray`: the local engine's own stages on a Ray cluster; only the driver writes the run folder.

Mapping: a pool of worker actors. Each worker holds its own backends (a transformers
model, a vLLM engine on `tensor_parallel_size` GPUs, or an API client with its
share of the concurrency) and runs `Engine.process`, the local engine's code for
principle draws, seeds, quality gates, judge and records, on blocks of pending
examples. The driver cuts the blocks, keeps two in flight per worker, and lands
what comes back as the local engine lands a chunk: calls into cache.sqlite, then
the records as one shard. Why not `ray.data.llm`: its processors make one
operator per model call, while a CAI example is several dependent calls with
principle draws and gates between them, and nothing is cached between operators.

The cache across machines: no worker opens the run's cache.sqlite (SQLite locks
are unsafe on network file systems). Before a block leaves, the driver replays its
stages against the cache with a stand-in that knows only cached answers, and
sends those entries with the block. A worker commits every call it makes to a
spool on its own node's disk (cai/spool.py) and returns the block's new calls with
its records. A killed driver takes its workers with it; the next run first
collects every node's spools into cache.sqlite, so no finished call is made again.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections import Counter, deque

from cai import __version__, spool
from cai.backends import CallFailed
from cai.backends.loading import LazyBackend, close
from cai.engine import Engine, Stats
from cai.errors import InputError


class _Replay:
    """The driver's stand-in backend: every call misses, so the cache answers what it can."""

    supports_logprobs = True

    def __init__(self, identity: str):
        self.identity = identity

    def chat(self, conversations, sampling, progress=None):
        return [CallFailed("not cached")] * len(conversations)

    def choice_logprobs(self, conversations, choices, progress=None):
        return [CallFailed("not cached")] * len(conversations)


class _Tally:
    """A worker's progress sink: units per step, replayed into the driver's bars."""

    def __init__(self):
        self.done, self.extended = Counter(), Counter()

    def extend(self, stage: str, n: int) -> None:
        self.extended[stage] += n

    def start(self, stage: str) -> None:
        pass

    def advance(self, stage: str, n: int) -> None:
        self.done[stage] += n


class Worker:
    """One actor: its own backends behind a node-local spool cache, the local engine's stages."""

    def __init__(self, config, constitution, index: int, run_key: str, policy=None, judge=None):
        import ray

        self.index, self.error, self.owned = index, None, []
        self.where = {"index": index, "node": ray.get_runtime_context().get_node_id(),
                      "host": socket.gethostname(), "pid": os.getpid(), "cai": __version__}
        try:  # a node without the backend's extra or model: told to the driver as one line
            if policy is None:
                policy = LazyBackend(config.policy)
                self.owned.append(policy)
            if judge is None and config.feedback.enabled and not config.judge_is_policy():
                judge = LazyBackend(config.judge, "--judge-model")
                self.owned.append(judge)
        except InputError as exc:
            self.error = "; ".join(p.message for p in exc.problems)
            return
        self.dir = spool.worker_dir(run_key, index)
        self.engine = Engine(config, constitution, policy, self.dir, progress=_Tally(), judge=judge)
        self.backends = {self.engine.policy, self.engine.judge}
        for b in self.backends:
            b.new_log = {}
        self.returned: deque[list[str]] = deque()  # keys of the blocks returned, oldest first

    def info(self) -> dict:
        return {**self.where, "error": self.error}

    def process(self, block: list[dict], hints: dict) -> dict:
        e = self.engine
        # The driver sends a worker a block only after landing one of its earlier two: all but the
        # last block returned are in the run's cache now, so the spool lets them go.
        while len(self.returned) > 1:
            e.cache.delete_many(self.returned.popleft())
        e.cache.preloaded = {k: v for k, (v, _) in hints.items()}
        e.cache.preloaded_usage = {k: u for k, (_, u) in hints.items() if u}
        e.reset_counts()  # this block's counts only
        e.progress = _Tally()
        failed = sum(b.failed for b in self.backends)
        started = time.perf_counter()
        records = e.process(block)
        calls = [(k, b.identity, v, u) for b in self.backends for k, (v, u) in b.new_log.items()]
        self.returned.append([k for k, *_ in calls])
        for b in self.backends:
            b.new_log = {}
        c = e.calls
        return {"records": records, "calls": calls, "worker": self.where, "seconds": time.perf_counter() - started,
                "stage_calls": dict(c.calls), "hits": sum(c.hits.values()), "stage_seconds": dict(c.seconds),
                "load_seconds": c.load_seconds, "failed_calls": sum(b.failed for b in self.backends) - failed,
                "progress": {"done": dict(e.progress.done), "extended": dict(e.progress.extended)},
                "tokens": {k: dict(v) for k, v in c.tokens.items()},
                "model_tokens": {k: dict(v) for k, v in c.model_tokens.items()},
                "backend_stats": {"policy": e.backend_stats("policy"), "judge": e.backend_stats("judge")}}

    def close(self, clear: bool) -> None:
        """Stop the backends (vLLM's processes); drop the spool once the driver holds its calls."""
        close(*self.owned)
        if clear and self.error is None:
            self.engine.cache.close()
            spool.remove(self.dir)


class RayEngine:
    """The Engine's interface (run, stats, fingerprint, store, current_records) over a Ray cluster."""

    def __init__(self, config, constitution, policy, out, progress=None, judge=None):
        self.config, self.constitution, self.progress = config, constitution, progress
        self.shipped = tuple(b if b is not None and not isinstance(b, LazyBackend) else None for b in (policy, judge))
        replay_judge = _Replay(judge.identity) if judge is not None else None
        self.local = Engine(config, constitution, _Replay(policy.identity), out, progress, judge=replay_judge)
        self.fingerprint, self.store, self.stats = self.local.fingerprint, self.local.store, self.local.stats
        self.cache, self.budget = self.local.cache, None
        self.load_seconds = 0.0
        self.workers: dict[int, dict] = {}  # index -> where it runs and what it did
        self.info: dict = {"kind": "ray", "address": config.ray.address}

    def current_records(self, examples):
        return self.local.current_records(examples)

    def backend_stats(self, role: str) -> dict:
        """Summed over workers (each worker's latest counters)."""
        total: Counter = Counter()
        for w in self.workers.values():
            total.update({k: v for k, v in w["backend_stats"].get(role, {}).items() if isinstance(v, (int, float))})
        return dict(total)

    def run(self, examples: list[dict]) -> Stats:
        eng = self.local
        eng.store.sweep()
        todo = eng.pending(examples)
        eng.add_bars(todo)
        eng.progress = None  # the replays below must not move the bars
        try:
            if todo:
                self._on_cluster(todo)
        finally:
            eng.cache.close()
        self.info["workers"] = sorted(self.workers.values(), key=lambda w: w["index"])
        return self.stats

    def _on_cluster(self, todo: list[dict]) -> None:
        import ray

        from cai import cluster

        started = time.perf_counter()
        cluster.connect(self.config.ray.address)
        try:
            run_key = spool.run_key(self.local.out)
            self.local.cache.put_many(cluster.node_spools(run_key, "read"))  # calls a killed run finished
            cluster.node_spools(run_key, "clear")
            actors = cluster.start_workers(Worker, self.config, self.constitution, run_key, self.shipped)
            self.info.update(cluster.describe(), startup_seconds=round(time.perf_counter() - started, 3))
            self._dispatch(todo, actors)
            ray.get([a.close.remote(True) for a in actors], timeout=120)
        finally:
            ray.shutdown()

    def _hints(self, block: list[dict]) -> dict:
        """The cached calls this block's stages will ask for: its stages replayed against the cache."""
        backends = {self.local.policy, self.local.judge}
        for b in backends:
            b.hit_log = {}
        self.local.process(block)
        return {k: v for b in backends for k, v in b.hit_log.items()}

    def _dispatch(self, todo: list[dict], actors: list) -> None:
        import ray

        from cai.cluster import result

        size = self.config.ray.block_size or min(self.config.chunk_size,
                                                 math.ceil(len(todo) / (2 * len(actors))))
        blocks = deque(todo[i:i + size] for i in range(0, len(todo), size))
        flying: dict = {}  # ref -> (actor, examples in its block)

        def submit(actor) -> None:
            if self.budget is not None and not self.stats.stopped:  # blocks in flight count as next
                landed = self.stats.generated + self.stats.failed
                ahead = sum(n for _, n in flying.values()) + len(blocks[0])
                self.stats.stopped = self.budget.stop_before(self.stats.model_tokens, landed, ahead,
                                                             len(todo) - landed)
            if self.stats.stopped:
                return
            block = blocks.popleft()
            flying[actor.process.remote(block, self._hints(block))] = (actor, len(block))

        for actor in actors:
            for _ in range(2):
                if blocks:
                    submit(actor)
        while flying:
            ready, _ = ray.wait(list(flying), num_returns=1)
            actor, _ = flying.pop(ready[0])
            self._land(result(ready[0]))
            if blocks:
                submit(actor)

    def _land(self, result: dict) -> None:
        """A block back from a worker: its calls into the cache first, then its records, counts, bars."""
        self.local.cache.put_many(result["calls"])
        self.local.keep(result["records"])
        s = self.stats
        calls = Counter(result["stage_calls"])
        s.stage_calls.update(calls)
        s.model_calls += sum(calls.values())
        s.judge_calls += calls.get("judge", 0)
        s.cache_hits += result["hits"]
        s.failed_calls += result["failed_calls"]
        s.stage_seconds.update(result["stage_seconds"])  # worker-seconds, summed over workers
        for mine, theirs in ((s.tokens, result["tokens"]), (s.model_tokens, result["model_tokens"])):
            for key, counts in theirs.items():
                mine.setdefault(key, Counter()).update(counts)
        self.load_seconds += result["load_seconds"]
        where = dict(result["worker"])
        node = where.pop("node")
        w = self.workers.setdefault(where["index"], {**where, "blocks": 0, "examples": 0, "model_calls": 0,
                                                     "cache_hits": 0, "seconds": 0.0, "nodes": []})
        w.update(pid=where["pid"], blocks=w["blocks"] + 1, examples=w["examples"] + len(result["records"]),
                 model_calls=w["model_calls"] + sum(calls.values()), cache_hits=w["cache_hits"] + result["hits"],
                 seconds=round(w["seconds"] + result["seconds"], 3), backend_stats=result["backend_stats"])
        if node not in w["nodes"]:  # a restarted actor may come back on another node
            w["nodes"].append(node)
        if self.progress:
            for stage in self.local.step_names():
                if result["progress"]["extended"].get(stage):
                    self.progress.extend(stage, result["progress"]["extended"][stage])
                if result["progress"]["done"].get(stage):
                    self.progress.start(stage)
                    self.progress.advance(stage, result["progress"]["done"][stage])

