"""The over-optimisation lesson as a background job: a kind of app.jobs job, in a worker thread with no Streamlit calls.

The lesson takes minutes the first time, so it runs like the page's other jobs: in the server's one job
slot (not beside a training run competing for the CPU), surviving page changes, polled by a live panel
with a bar and the lesson's time left. Stop sets the job's `threading.Event`: rmcore's sampling checks it
at every token, and the job itself checks it at each of the lesson's stage lines, so a stop lands at the
next one; what was finished (a judge, the answers) stays cached in the lesson's folder for the next run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.jobs import ACTIVE, Job
from rmcore.core.progress import format_duration
from rmcore.policy.lesson import STAGE_SECONDS, STAGES


@dataclass
class LessonJobRequest:
    config: Any  # rmcore.policy.lesson.LessonConfig
    out_dir: Path  # the seed's lesson folder: its cache is reused, so the manager must not refuse it as taken
    model_name: str  # the panel's name of the run: "lesson, seed 0"
    resume: bool = True

    def new_job(self, owner: str) -> LessonJob:
        return LessonJob(self, owner)


@dataclass
class LessonSnapshot:
    id: str
    owner: str
    model_name: str
    out_dir: str
    config: dict[str, Any]
    status: str  # starting, running, stopping, done, stopped, failed
    phase: str  # the stage in words, with the lesson's time left
    progress: float  # 0..1 of the whole lesson (the four stages count equally)
    step: int
    total_steps: int
    eta_s: float | None
    elapsed_s: float
    steps: list[dict[str, Any]] = field(default_factory=list)  # (always empty: the sidebar reads phase_progress)
    evals: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    saved: bool = False
    phase_progress: float | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def stage_index(phase: str, current: int) -> int:
    """Which of rmcore's lesson stages a phase line is about (the current one when it names none)."""
    words = {"proxy": "proxy", "gold": "gold judge", "sampling": "sampling", "scoring": "score"}
    return next((i for i, s in enumerate(STAGES) if words[s] in phase), current)


def later_seconds(config: Any, index: int) -> float:
    """The measured seconds of the stages after `index`, scaled to this lesson's number of answers (as
    rmcore's lesson clock scales them), for the time left while a judge reports only its own."""
    scale = len(config.prompts) * config.samples_per_prompt / (16 * 16)
    return sum(STAGE_SECONDS[s] * (scale if s in ("sampling", "scoring") else 1.0) for s in STAGES[index + 1:])


class LessonJob(Job):
    """Running rmcore.policy.lesson.run_lesson for one seed (the Best-of-n & RLHF page's lesson)."""

    what = "the over-optimisation lesson"
    doing = "Running the lesson"
    thread_name = "lesson"
    stopping = "stopping at the next stage line (the judges and answers finished so far stay cached)"

    def __init__(self, request: LessonJobRequest, owner: str):
        super().__init__(request, owner)
        self._stage, self._eta, self._text = 0, None, "starting the lesson"

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            stopping = self._status == "stopping"
            if event.get("event") == "phase" and str(event.get("phase", "")).startswith("lesson:"):
                self._on_stage(event)
            elif event.get("event") == "step" and event.get("total_steps"):
                self._on_judge_step(event)
        if stopping and event.get("event") == "phase" and str(event.get("phase", "")).startswith("lesson:"):
            raise KeyboardInterrupt  # between the lesson's own steps: nothing half-written is kept

    def _on_stage(self, event: dict[str, Any]) -> None:
        """A stage line of the lesson's clock: its share and the whole lesson's time left (lock held)."""
        if self._status == "starting":
            self._status = "running"
        phase = str(event["phase"])
        self._stage = stage_index(phase, self._stage)
        self._text = phase.removeprefix("lesson:").strip()
        self._eta = event.get("eta_s")
        self._set(self._stage + float(event.get("progress") or 0.0), self._text)

    def _on_judge_step(self, event: dict[str, Any]) -> None:
        """A training step of a judge: its share, and its own time left plus the stages still to come."""
        step, total = int(event["step"]), int(event["total_steps"])
        own = event.get("eta_s")
        self._eta = None if own is None else float(own) + later_seconds(self.request.config, self._stage)
        self._set(self._stage + step / total, f"{self._text}: step {step} of {total}")

    def _set(self, stages_done: float, text: str) -> None:
        if self._status == "stopping":
            return  # keep saying what stopping does
        self._progress = min(1.0, stages_done / len(STAGES))
        self._phase = text + (f", about {format_duration(self._eta)} left" if self._eta else "")

    def _work(self) -> tuple[str, str]:
        from rmcore.policy.lesson import run_lesson  # torch: only a running job needs it

        try:
            run_lesson(self.request.config, self.request.out_dir, on_event=self._on_event, stop_event=self.stop_event)
        except KeyboardInterrupt:
            return "stopped", "stopped; what was finished stays cached, so running it again goes on from there"
        return "done", "finished"

    def snapshot(self) -> LessonSnapshot:
        with self._lock:
            common = self._common()
            common.update(eta_s=self._eta if self._status in ACTIVE else None, steps=[])
            return LessonSnapshot(**common, phase_progress=self._progress)


__all__ = ["LessonJob", "LessonJobRequest", "LessonSnapshot", "later_seconds", "stage_index"]
