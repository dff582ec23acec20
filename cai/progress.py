"""Progress per stage: rich bars with rate and ETA on a terminal, plain lines otherwise.

The one progress display of every job: generate's stages, audit and eval
calls, and training steps (cai/train/outputs.py drives it from TRL's callbacks).

Logs and CI capture stdout, where redrawn bars turn into noise; there we print a
line per stage at most every few seconds and when it finishes.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


class StageProgress:
    def __init__(self, console: Console | None = None, interval: float = 5.0, unit: str = "ex"):
        self.console = console or Console(stderr=True)
        self.unit = unit
        self.live = self.console.is_terminal
        self.interval = interval
        self._tasks: dict[str, dict] = {}
        self._bars = Progress(
            TextColumn("{task.description:>12}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(), console=self.console, disable=not self.live,
        )

    def __enter__(self) -> StageProgress:
        self._bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bars.__exit__(*exc)

    def add(self, stage: str, total: int) -> None:
        task = self._bars.add_task(stage, total=total, rate="", note="")
        self._tasks[stage] = {"task": task, "done": 0, "total": total, "start": None, "printed": 0.0, "note": ""}

    def advance(self, stage: str, n: int) -> None:
        t = self._tasks[stage]
        now = time.monotonic()
        if t["start"] is None:
            t["start"] = now
        t["done"] += n
        elapsed = max(now - t["start"], 1e-9)
        rate = t["done"] / elapsed
        self._bars.update(t["task"], advance=n, rate=f"{rate:.1f} {self.unit}/s" if elapsed > 0.5 else "")
        finished = t["done"] >= t["total"]
        if not self.live and (finished or now - t["printed"] >= self.interval):
            t["printed"] = now
            eta = (t["total"] - t["done"]) / rate if rate > 0 else 0.0
            speed = f" {rate:.1f} {self.unit}/s eta {eta:.0f}s" if elapsed > 0.5 else ""
            note = f" {t['note']}" if t["note"] else ""
            print(f"{stage:>12} {t['done']}/{t['total']}{speed}{note}", file=sys.stderr, flush=True)

    def extend(self, stage: str, n: int) -> None:
        """More work for a stage whose size is known only chunk by chunk (the judge's)."""
        t = self._tasks[stage]
        t["total"] += n
        self._bars.update(t["task"], total=t["total"])

    def start(self, stage: str) -> None:
        """Start the clock when work begins, not when the bar is created."""
        t = self._tasks[stage]
        if t["start"] is None:
            t["start"] = time.monotonic()

    def say(self, line: str) -> None:
        """A one-line message above the bars (e.g. which backend `auto` chose)."""
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def note(self, stage: str, text: str) -> None:
        """A short status beside the bar (training shows its latest loss here)."""
        t = self._tasks[stage]
        t["note"] = text
        self._bars.update(t["task"], note=text)
