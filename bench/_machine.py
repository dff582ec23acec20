"""How much of the machine other processes used while a benchmark ran.

The load average counts the benchmark's own threads, so it cannot tell a
quiet machine from a busy one. Instead: CPU time the whole machine spent busy
(/proc/stat) minus this process's and its children's CPU time, as a share of
wall time x CPUs. Above ~5%, timings (and ratios) are disturbed: with 2 cores
one busy neighbour makes torch's 2 threads wait on each other.
"""

from __future__ import annotations

import os
import time

_HZ = os.sysconf("SC_CLK_TCK")


def _busy_seconds() -> float | None:
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (f + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _HZ


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ForeignLoad:
    """load = ForeignLoad().start(); ...; load.stop(); then load.share (0..1) and load.describe()."""

    def start(self) -> ForeignLoad:
        self.wall, self.busy, self.own = time.perf_counter(), _busy_seconds(), _own_seconds()
        return self

    def stop(self) -> ForeignLoad:
        wall = time.perf_counter() - self.wall
        busy = _busy_seconds()
        self.share = None
        if busy is not None and self.busy is not None and wall > 0:
            other = (busy - self.busy) - (_own_seconds() - self.own)
            self.share = max(0.0, other / (wall * (os.cpu_count() or 1)))
        return self

    def describe(self) -> str:
        if self.share is None:
            return "other processes' CPU use: unknown (no /proc/stat)"
        verdict = "quiet" if self.share < 0.05 else "BUSY: timings disturbed, rerun on an idle machine"
        return f"other processes used {self.share:.1%} of the CPUs during the run ({verdict})"
