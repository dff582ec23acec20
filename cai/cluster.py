"""The Ray side of `engine: ray`: connect, place workers, gather spools, and say what went wrong in one line.

Placement: one worker per node by default (`ray.workers` to change it), spread
over the nodes. vLLM's own tensor and data parallelism stay inside a worker on
one node (the worker asks for TP x DP GPUs); Ray adds workers, i.e. more
engines, across nodes. An API's `concurrency` is the whole run's budget: each
worker gets its share, so adding nodes never multiplies the load on the API.
"""

from __future__ import annotations

import logging
import socket

from cai import __version__, spool
from cai.errors import InputError, Problem

RETRIES = 3  # a worker process that dies (OOM, preempted node) is restarted and its block retried


def _bad_address(address: str, why: str) -> InputError:
    return InputError([Problem("--ray-address", None, "", f"no Ray cluster at {address} ({why}); start one with "
                               "`ray start --head` (README: Scale out) or use --ray-address local")])


def connect(address: str) -> None:
    import ray

    if address not in ("auto", "local"):
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:  # ray.init waits a long time on an address where nothing listens
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise _bad_address(address, f"{host}:{port}: {exc.strerror or exc}") from None
    args = dict(logging_level=logging.WARNING, log_to_driver=False)
    try:
        if address == "local":
            ray.init(include_dashboard=False, **args)
        else:
            ray.init(address=address, **args)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise _bad_address(address, str(exc).strip().splitlines()[0]) from None


def _nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n["Alive"]]


def describe() -> dict:
    import ray

    total = ray.cluster_resources()
    return {"nodes": len(_nodes()), "cpus": total.get("CPU", 0), "gpus": total.get("GPU", 0)}


def node_spools(run_key: str, action: str) -> list:
    """`read` (every call in this run's spools, on every node) or `clear` them."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(spool.read if action == "read" else spool.clear)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(run_key)
            for n in _nodes()]
    found = ray.get(refs)
    return [row for rows in found if rows for row in rows]


def _share(config, count: int, index: int):
    """Worker `index`'s copy of the config: its share of each API model's concurrency and rate limits."""
    config = config.model_copy(deep=True)
    for role in ("policy", "judge"):
        spec = getattr(config, role)
        if spec is not None and spec.backend == "openai":
            total = spec.options.concurrency
            spec.options.concurrency = total // count + (index < total % count)
            for limit in ("rpm", "tpm"):  # per-minute limits: an equal share each
                if getattr(spec.options, limit):
                    setattr(spec.options, limit, getattr(spec.options, limit) / count)
    return config


def plan_workers(config) -> tuple[int, float]:
    """How many workers, and the GPUs each asks for."""
    r, spec = config.ray, config.policy
    nodes = _nodes()
    gpus = r.gpus_per_worker
    if gpus is None:
        has_gpus = any(n["Resources"].get("GPU", 0) for n in nodes)
        gpus = spec.options.tensor_parallel_size * spec.options.data_parallel_size if (
            spec.backend == "vllm" and has_gpus) else 0
    count = r.workers or (sum(int(n["Resources"].get("GPU", 0) // gpus) for n in nodes) if gpus else len(nodes))
    for s in (config.policy, config.judge):
        if s is not None and s.backend == "openai":  # each worker keeps at least one request in flight
            count = min(count, s.options.concurrency)
    return max(1, count), gpus


def start_workers(worker_class, config, constitution, run_key: str, shipped: tuple) -> list:
    import ray

    count, gpus = plan_workers(config)
    r = config.ray
    actor = ray.remote(worker_class).options(
        num_cpus=r.cpus_per_worker, num_gpus=gpus, scheduling_strategy="SPREAD",
        max_restarts=RETRIES, max_task_retries=RETRIES)
    actors = [actor.remote(_share(config, count, i), constitution, i, run_key, *shipped) for i in range(count)]
    try:
        infos = ray.get([a.info.remote() for a in actors], timeout=r.start_timeout)
    except ray.exceptions.GetTimeoutError:
        have = describe()
        raise RuntimeError(f"{count} workers asking {r.cpus_per_worker:g} CPU and {gpus:g} GPU each were not all "
                           f"placed within {r.start_timeout:g} s (the cluster has {have['cpus']:g} CPUs and "
                           f"{have['gpus']:g} GPUs on {have['nodes']} nodes): lower ray.workers or "
                           "ray.cpus_per_worker") from None
    for info in infos:
        if info["error"]:
            raise InputError([Problem("engine", None, "", f"worker {info['index']} on {info['host']}: {info['error']} "
                                      "(every node needs the backend's extra, model and key)")])
        if info["cai"] != __version__:
            raise InputError([Problem("engine", None, "", f"node {info['host']} runs cai {info['cai']}, this driver "
                                      f"{__version__}: install the same version on every node")])
    return actors


def result(ref) -> dict:
    """A block's result; a worker's failure as the error it was, or one line when its process died."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, (InputError, KeyboardInterrupt)):
            raise cause from None
        raise RuntimeError(f"a worker failed: {type(cause).__name__}: {cause}".splitlines()[0]) from cause
    except ray.exceptions.RayActorError as exc:
        raise RuntimeError(f"a worker died {RETRIES + 1} times on this block (Ray's retries are spent): "
                           f"{str(exc).strip().splitlines()[0]}") from None
