"""Stop requests for long runs: the app's Stop button, Ctrl-C, or SIGTERM, in every phase of the run.

A run asks `is_set()` at its safe points: between two training steps, between two batches of trunk
features or of a held-out evaluation. The first Ctrl-C (or SIGTERM, what a job scheduler or
`kill` sends) only sets the flag, so the run stops at the next safe point within seconds and saves
what it has. A second one ends the process at once, through the signal's default action, even in
the middle of a long forward pass where Python would not run a handler for minutes; what was saved
atomically before (the last checkpoint) is kept.

Handlers are installed only in the main thread, and never over a signal that is ignored (a
background job started by a non-interactive shell ignores SIGINT, as every program does there:
send it SIGTERM) or handled by someone else (a notebook kernel).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

_DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class StopSignal:
    """A context manager: `is_set()` is True once the app asked to stop or a first signal arrived."""

    def __init__(self, stop_event: threading.Event | None, on_first: Callable[[], None] | None = None):
        self.stop_event = stop_event
        self.on_first = on_first or (lambda: None)
        self.interrupted: str | None = None  # the name of the first signal, once one came
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for signum, default in _DEFAULTS.items():
                if signal.getsignal(signum) is default:
                    self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum, frame) -> None:
        signal.signal(signum, signal.SIG_DFL)  # the second one ends the process at once
        if self.interrupted is None:
            self.interrupted = NAMES.get(signum, f"signal {signum}")
            self.on_first()

    def is_set(self) -> bool:
        return self.interrupted is not None or (self.stop_event is not None and self.stop_event.is_set())
