"""Waits a person sees: work that reports no progress of its own (loading a model, importing torch) runs in a
thread while the page shows what it is doing, a bar and the time left.

The time left is counted against an expected duration (the caller's estimate for a quiet machine, times
how much longer the last wait of the same kind took here: a busy machine is noticed once and then
expected), and says so plainly when the wait runs past it. A wait shorter than half a second shows
nothing, so a model already loaded draws no bar at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import streamlit as st
from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

from rmcore.core.progress import format_duration

T = TypeVar("T")
QUIET_S = 0.5  # a wait shorter than this shows nothing
POLL_S = 0.25
_slowdown: dict[str, float] = {}  # kind -> how much longer than expected the last wait of that kind took


def expected(kind: str, quiet_s: float) -> float:
    """Seconds a wait of `kind` should take here now: `quiet_s`, times the slowdown seen last time."""
    return quiet_s * _slowdown.get(kind, 1.0)


def progress_text(message: str, elapsed: float, expected_s: float) -> tuple[float, str]:
    """The bar's value and text after `elapsed` of an `expected_s` wait."""
    if elapsed < expected_s:
        return (min(0.95, elapsed / expected_s),
                f"{message}: {format_duration(elapsed)} so far, about {format_duration(expected_s - elapsed)} left")
    return 0.95, (f"{message}: {format_duration(elapsed)} so far, longer than the {format_duration(expected_s)} "
                  "expected (the machine is busy); almost there")


def wait_for(work: Callable[[], T], message: str, quiet_s: float, kind: str) -> T:
    """`work()`'s result (or its exception), computed in a thread while the page shows `message`, a bar and
    the time left. `quiet_s`: how long it takes on a quiet machine (the caller's estimate)."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # re-raised in the page's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=f"rmcore-wait-{kind}", daemon=True)
    add_script_run_ctx(thread, get_script_run_ctx())  # st.cache_resource inside `work` needs the run's context
    started = time.perf_counter()
    thread.start()
    thread.join(QUIET_S)
    if thread.is_alive():
        expected_s = max(1.0, expected(kind, quiet_s))
        slot = st.empty()
        while thread.is_alive():
            value, text = progress_text(message, time.perf_counter() - started, expected_s)
            slot.progress(value, text=text)
            thread.join(POLL_S)
        slot.empty()
        took = time.perf_counter() - started
        _slowdown[kind] = min(20.0, max(1.0, took / max(quiet_s, 1e-3)))
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


class TimeLeft:
    """The time left of work that reports its share done (0-1), from the speed so far."""

    def __init__(self):
        self.started = time.perf_counter()

    def text(self, share: float, most: bool = False) -> str:
        """", about 40 s left" (", at most ..." for work that may end early), or "" before there is a speed."""
        elapsed = time.perf_counter() - self.started
        if share <= 0.01 or elapsed < 0.5:
            return ", measuring the speed"
        left = elapsed * (1 - min(share, 1.0)) / share
        return f", {'at most' if most else 'about'} {format_duration(left)} left"
