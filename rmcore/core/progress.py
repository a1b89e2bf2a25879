"""Progress of long CLI commands: a tqdm bar on a terminal, a plain line every few seconds elsewhere.

A bar redrawn with carriage returns is noise in a log file or CI output, and tqdm stays silent there
(`disable=None`), so a long `score --data` or `eval` said nothing for minutes. Off a terminal, a line
like `[rmcore] eval: 40% of tokens, 12 s so far, about 18 s left` goes to stderr every
RMCORE_PROGRESS_SECONDS seconds (default 5) until the work is done, and one closing line with the
time it took (so even a short run leaves a trace in the log).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

DEFAULT_SECONDS = 5.0


def progress(total: int, unit: str, desc: str, stream: TextIO | None = None):
    """A tqdm bar when `stream` (default stderr) is a terminal, else a LineProgress; both are context
    managers with `update(n)` and `n`."""
    stream = stream or sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, file=stream, dynamic_ncols=True, desc=desc)
    seconds = float(os.environ.get("RMCORE_PROGRESS_SECONDS") or DEFAULT_SECONDS)
    return LineProgress(total, unit, desc, stream, seconds)


class LineProgress:
    """Counts like a tqdm bar; a background thread prints one line every `every_s` seconds until closed.

    A thread rather than printing from `update`: a caller may report only every few dozen prompts,
    and the point is that a long command says something every few seconds.
    """

    def __init__(self, total: int, unit: str, desc: str, stream: TextIO, every_s: float = DEFAULT_SECONDS):
        self.total, self.unit, self.desc, self.stream = total, unit, desc, stream
        self.every_s = max(0.05, every_s)
        self.n = 0
        self.started = time.perf_counter()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._report, name="rmcore-progress", daemon=True)
        self._thread.start()

    def update(self, count: int = 1) -> None:
        self.n += count

    def _report(self) -> None:
        while not self._closed.wait(self.every_s):
            print(self.line(time.perf_counter() - self.started), file=self.stream, flush=True)

    def line(self, elapsed: float, done: bool = False) -> str:
        from rmcore.training.estimate import format_duration  # the process has torch by now (it is scoring)

        share = min(1.0, self.n / self.total) if self.total else 1.0
        if self.unit.startswith("%"):  # counting percent already: "40% of tokens"
            text = f"[rmcore] {self.desc}: {self.n}{self.unit}, "
        else:
            text = f"[rmcore] {self.desc}: {self.n}/{self.total} {self.unit} ({share:.0%}), "
        text += f"{format_duration(elapsed)} {'in all' if done else 'so far'}"
        if 0 < share < 1 and not done:
            text += f", about {format_duration(elapsed * (1 - share) / share)} left"
        return text

    def close(self, finished: bool = True) -> None:
        self._closed.set()
        self._thread.join()
        if finished:
            print(self.line(time.perf_counter() - self.started, done=True), file=self.stream, flush=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(finished=exc_type is None)
