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

from tqdm import tqdm

DEFAULT_SECONDS = 5.0
SLOW_SECONDS = 2.0  # a wait with no progress of its own is announced after this long


def format_duration(seconds: float) -> str:
    """A duration for people, as every rmcore message writes it: "3 s", "1 min 15 s", "2 h 05 min"."""
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f} s" if seconds < 1 else f"{seconds:.0f} s"
    if seconds < 60:
        return f"{round(seconds):.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s" if minutes < 10 else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def count(n: int, noun: str) -> str:
    """A count for people, as every rmcore message writes it: "1 comparison", "9,416 comparisons"."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def progress(total: float, unit: str, desc: str, stream: TextIO | None = None, initial: float = 0):
    """A tqdm bar when `stream` (default stderr) is a terminal, else a LineProgress; both are context
    managers with `update(n)`, `n` and `close()`. `initial` is work done before (a resumed file): the
    time left is counted from the speed of this run only."""
    stream = stream or sys.stderr
    if stream.isatty():
        return tqdm(total=total, initial=initial, unit=unit, file=stream, dynamic_ncols=True, desc=desc)
    seconds = float(os.environ.get("RMCORE_PROGRESS_SECONDS") or DEFAULT_SECONDS)
    return LineProgress(total, unit, desc, stream, seconds, initial=initial)


class ProgressCallback:
    """An `on_progress(done, total)` callback that draws a `progress` bar, opened at the first report.

    The library's long loops (sampling, scoring for best-of-n) report (done, total); the first report
    may already count work done before (prompts a samples file holds), which becomes the bar's start.
    """

    def __init__(self, desc: str, unit: str = "prompts", stream: TextIO | None = None):
        self.desc, self.unit, self.stream = desc, unit, stream
        self.bar = None

    def __call__(self, done: float, total: float) -> None:
        if self.bar is None:
            self.bar = progress(total, self.unit, self.desc, self.stream, initial=done)
            return
        self.bar.update(done - self.bar.n)

    def close(self, finished: bool = True) -> None:
        if self.bar is not None:
            if isinstance(self.bar, LineProgress):
                self.bar.close(finished)
            else:
                self.bar.close()
            self.bar = None

    def __enter__(self) -> ProgressCallback:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(finished=exc_type is None)


class LineProgress:
    """Counts like a tqdm bar; a background thread prints one line every `every_s` seconds until closed.

    A thread rather than printing from `update`: a caller may report only every few dozen prompts,
    and the point is that a long command says something every few seconds.
    """

    def __init__(self, total: float, unit: str, desc: str, stream: TextIO, every_s: float = DEFAULT_SECONDS,
                 initial: float = 0):
        self.total, self.unit, self.desc, self.stream = total, unit, desc, stream
        self.every_s = max(0.05, every_s)
        self.n = self.initial = initial
        self._counted, self._counted_at, self._left_then = initial, 0.0, 0.0  # the last update, for the time left
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
        share = min(1.0, self.n / self.total) if self.total else 1.0
        if self.unit.startswith("%"):  # counting percent already: "40% of tokens"
            text = f"[rmcore] {self.desc}: {self.n:g}{self.unit}, "
        else:
            text = f"[rmcore] {self.desc}: {self.n:g}/{self.total:g} {self.unit} ({share:.0%}), "
        text += f"{format_duration(elapsed)} {'in all' if done else 'so far'}"
        left = self._time_left(elapsed)
        if 0 < share < 1 and left is not None and not done:
            text += f", about {format_duration(left)} left"
        return text

    def _time_left(self, elapsed: float) -> float | None:
        """From the speed of this run (work done before a resume took no time), measured when the count
        last moved; between two updates it counts down instead of growing with the time waited."""
        this_run = self.n - self.initial
        if this_run <= 0:
            return None
        if self.n != self._counted:
            self._counted, self._counted_at = self.n, elapsed
            self._left_then = elapsed * (self.total - self.n) / this_run
        return max(1.0, self._left_then - (elapsed - self._counted_at))

    def close(self, finished: bool = True) -> None:
        self._closed.set()
        self._thread.join()
        if finished:
            print(self.line(time.perf_counter() - self.started, done=True), file=self.stream, flush=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(finished=exc_type is None)


class SlowNotice:
    """Says `message` on stderr when the work inside the `with` is still going after `after_s` seconds,
    and how long it took once it ends; quick work says nothing.

    For waits that report no progress of their own (importing torch, loading a model): a command that
    sits silent for seconds looks hung, but a line on every quick call would be noise (and would break
    one-line error messages).
    """

    def __init__(self, message: str, after_s: float | None = None, stream: TextIO | None = None):
        if after_s is None:  # RMCORE_SLOW_SECONDS: when to speak up (default 2 s)
            after_s = float(os.environ.get("RMCORE_SLOW_SECONDS") or SLOW_SECONDS)
        self.message, self.after_s, self.stream = message, after_s, stream or sys.stderr
        self._said = threading.Event()
        self._timer = threading.Timer(after_s, self._say)
        self._timer.daemon = True

    def _say(self) -> None:
        self._said.set()
        print(f"[rmcore] {self.message}…", file=self.stream, flush=True)

    def __enter__(self) -> SlowNotice:
        self.started = time.perf_counter()
        self._timer.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._timer.cancel()
        self._timer.join()
        if self._said.is_set() and exc_type is None:
            took = format_duration(time.perf_counter() - self.started)
            print(f"[rmcore] {self.message}: done in {took}", file=self.stream, flush=True)
