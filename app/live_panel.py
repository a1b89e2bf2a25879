"""The live panel of the server's background job: one component for the Train and the Best-of-n & RLHF pages.

A page describes its kind of job in a `LivePanel` (its words, its widget keys, how far the run is, its
numbers, what its owner may do once it ended) and calls `show(busy)`. While any job runs on the server,
a fragment redraws the panel every second: the heading, the progress bar, the outcome, the numbers and
the Stop button. When the job ends, or when a job of the other kind that held the server ends, one full
rerun redraws the page (its Start button enabled again) and the polling stops. Any session sees the
running job; a finished run is shown to the session that started it only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import streamlit as st

from app import state
from app.jobs import Job, manager
from app.ui import md

HEADINGS = {"starting": "Preparing", "stopping": "Stopping", "done": "Finished", "stopped": "Stopped",
            "failed": "Failed"}  # and the page's own word while it runs ("Training")


def _subheader(text: str) -> None:
    st.subheader(text)


@dataclass(frozen=True)
class LivePanel:
    """What one page shows of its kind of job. The hooks get the job's snapshot (JobSnapshot or PolicySnapshot)."""

    kind: type[Job]  # the kind this page shows (TrainingJob, PolicyJob)
    doing: str  # the heading while it runs: "Training: NAME"
    what: str  # the error after a failure: "Training failed: why"
    polling_key: str  # this session's flag: the page polls while a job (of either kind) runs
    stop_label: str
    stop_key: str
    bar: Callable[[Any], list[tuple[float, str]] | tuple[float, str] | None]  # the bars' values and texts
    numbers: Callable[[Any], None]  # the run's tiles and curves so far
    finished: Callable[[Any], None]  # what the owner can do with the run once it ended
    heading: Callable[[str], None] = _subheader
    intro: Callable[[Any], None] | None = None  # drawn under the heading (the Train page: the run's plan)
    watching: str | None = None  # told to a session watching another session's running job
    saved_hint: str = ""  # after "`models/NAME`" in the line that says what was saved
    every_s: float = 1.0

    def show(self, busy: bool) -> None:
        """Draw the panel, polled every `every_s` seconds while any job runs on the server."""
        st.session_state[self.polling_key] = busy
        st.fragment(run_every=self.every_s if busy else None)(self.draw)()

    def draw(self) -> None:
        snap = self._watched()
        if snap is None:
            return
        mine = snap.owner == state.session_id()
        self.heading(f"{HEADINGS.get(snap.status, self.doing)}: {snap.model_name}")
        if self.watching and snap.active and not mine:
            st.info(self.watching, icon=":material/group:")
        if self.intro is not None:
            self.intro(snap)
        self._progress(snap)
        self._outcome(snap)
        self.numbers(snap)
        if snap.active and mine:
            self._stop_button(snap)
        elif mine:
            self.finished(snap)

    def _watched(self):
        """The snapshot to draw, or None; a full rerun when the job this page polled for has ended."""
        job = manager().current(self.kind)
        if job is None:
            if manager().running() is None:
                self._ended()  # the other kind's job that held the server ended: re-enable Start
            return None
        snap = job.snapshot()
        if not snap.active:
            if snap.owner != state.session_id():
                return None  # another session's finished run is theirs to look at
            self._ended()
        return snap

    def _ended(self) -> None:
        if st.session_state.get(self.polling_key):
            st.session_state[self.polling_key] = False
            st.rerun()  # a full rerun re-enables Start and stops the polling

    def _progress(self, snap) -> None:
        shown = self.bar(snap)
        bars = [] if shown is None else [shown] if isinstance(shown, tuple) else list(shown)
        for value, text in bars:
            st.progress(max(0.0, min(1.0, value)), text=text)
        if snap.status == "stopping" and not any(snap.phase in text for _, text in bars):
            st.caption(snap.phase)  # what stopping does, when the bars' texts are about steps

    def _outcome(self, snap) -> None:
        if snap.status == "failed":
            st.error(f"{self.what} failed: {md(snap.error)}", icon=":material/error:")
        elif snap.saved:
            st.success(f"{snap.phase.capitalize()}: `models/{snap.model_name}`{self.saved_hint}.",
                       icon=":material/check_circle:")
        elif snap.status == "stopped":
            st.info(f"{snap.phase.capitalize()}.", icon=":material/info:")

    def _stop_button(self, snap) -> None:
        if st.button(self.stop_label, icon=":material/stop_circle:", key=self.stop_key,
                     disabled=snap.status == "stopping"):
            manager().stop(state.session_id())
            st.rerun(scope="fragment")


def clear_button(key: str, help: str, where: Any = st) -> None:
    """Hide this session's finished run from the page (its model stays on disk)."""
    if where.button("Clear", key=key, help=help):
        manager().forget(state.session_id())
        st.rerun()
