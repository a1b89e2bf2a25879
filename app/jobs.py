"""Background jobs: one per server, in a worker thread that makes no Streamlit calls.

Two kinds share this machinery: training a reward model (`TrainingJob`, the Train page) and
fine-tuning a policy toward one (`app.policy_jobs.PolicyJob`, the Best-of-n & RLHF page). A page
starts a job and polls `manager().current().snapshot()` from a fragment that reruns every second;
switching pages or closing the tab does not stop the thread. While a job of either kind runs, a
second one (from any session, of any kind) gets `JobBusy` with the running job's snapshot to show,
never a second run competing for the same CPU. Stop sets a `threading.Event` that rmcore checks at
every step boundary: it saves a checkpoint and the model so far.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.resources import ensure_ml
from app.settings import TRAIN_DATA_FILE
from rmcore.core.errors import ModelError, RmcoreError
from rmcore.core.folders import HELD_OUT_FILE, METADATA_FILE, read_metadata
from rmcore.core.outputs import atomic_write_text
from rmcore.core.progress import format_duration
from rmcore.data import RankedGroup, read_preferences, write_ranked_jsonl
from rmcore.training.config import TrainConfig

log = logging.getLogger(__name__)
ACTIVE = ("starting", "running", "stopping")


class JobBusy(RuntimeError):
    """A job (of either kind) is already running on this server."""

    def __init__(self, job: Job):
        self.snapshot = snapshot = job.snapshot()
        super().__init__(
            f"{job.what} ('{snapshot.model_name}') is already running on this server "
            f"({snapshot.progress:.0%} done); one job runs at a time"
        )


@dataclass
class JobRequest:
    config: TrainConfig
    train_groups: list[RankedGroup]
    eval_groups: list[RankedGroup]
    out_dir: Path
    model_name: str
    data_name: str = ""
    data_summary: dict[str, Any] = field(default_factory=dict)
    resume: bool = False  # continue the stopped run saved in out_dir (same data and settings)
    expected_s: dict[str, float] = field(default_factory=dict)  # the app's estimate of each phase, shown while
    # a phase that reports no progress of its own runs (loading, features without a budget)

    def new_job(self, owner: str) -> TrainingJob:
        return TrainingJob(self, owner)


@dataclass
class JobSnapshot:
    """A consistent copy of a job's state, safe to read from any session."""

    id: str
    owner: str  # the session that started it
    model_name: str
    out_dir: str
    data_name: str
    config: dict[str, Any]
    status: str  # starting, running, stopping, done, stopped, failed
    phase: str  # what it is doing now, in words
    phase_progress: float | None  # progress of that phase (computing features), when it has one
    progress: float  # 0..1 of the training steps
    step: int
    total_steps: int
    eta_s: float | None
    elapsed_s: float
    steps: list[dict[str, Any]]  # one per optimizer step: step, epoch, loss, accuracy, margin, ...
    evals: list[dict[str, Any]]  # one per held-out evaluation: step, eval_loss, eval_accuracy, eval_margin
    error: str | None
    train_prompts: int
    eval_prompts: int
    saved: bool = False  # a model folder was written (a run stopped before its first step writes none)
    plan: str | None = None  # with a time budget: the plan rmcore made at the start ("head mode, 1,205 of ...")
    phase_seconds: dict[str, float] = field(default_factory=dict)  # once done: seconds of each phase
    phase_elapsed_s: float = 0.0  # seconds since the current phase began
    budget_s: float = 0.0  # the run's time budget (0: none)
    expected_s: dict[str, float] = field(default_factory=dict)  # JobRequest.expected_s

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def last(self) -> dict[str, Any]:
        return self.steps[-1] if self.steps else {}

    @property
    def last_eval(self) -> dict[str, Any]:
        return self.evals[-1] if self.evals else {}


class Job:
    """What every background job shares: the worker thread, its status, the stop request.

    A kind of job says what it is (`what`, `thread_name`, `stopping`), turns rmcore's events into its
    state (`_on_event`, under the lock), runs rmcore (`_work`, returning its final status and phase)
    and takes a snapshot. `request` holds at least `out_dir`, `model_name` and `config`.
    """

    what = "a job"  # in "... is already running on this server"
    doing = "Running"  # the sidebar's "Running **model**: 40%"
    thread_name = "job"
    stopping = "stopping after this step; saving a checkpoint"

    def __init__(self, request, owner: str):
        self.id = uuid.uuid4().hex[:12]
        self.owner = owner
        self.request = request
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._status = "starting"
        self._phase = "starting"
        self._progress = 0.0
        self._steps: list[dict[str, Any]] = []
        self._evals: list[dict[str, Any]] = []
        self._error: str | None = None
        self._started = time.time()
        self._finished: float | None = None
        self._saved = False
        self.thread = threading.Thread(target=self._run, name=f"rmcore-{self.thread_name}-{self.id}", daemon=True)

    # -- the worker thread (no st.* calls here)
    def _on_event(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def _work(self) -> tuple[str, str]:
        """Run rmcore with `_on_event` and `stop_event`; (status: done or stopped, phase in words)."""
        raise NotImplementedError

    def _run(self) -> None:
        out_dir = self.request.out_dir
        try:
            status, phase = self._work()
            error = None
        except RmcoreError as exc:
            status, phase, error = "failed", "failed", str(exc)
        except Exception as exc:  # a bug: keep the server alive, log the traceback, tell the user in one line
            log.error("%s %s failed:\n%s", self.what, self.id, traceback.format_exc())
            status, phase, error = "failed", "failed", f"{type(exc).__name__}: {exc}"
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # nothing was saved: free the reserved name
        with self._lock:
            self._status, self._phase, self._error = status, phase, error
            self._saved = (out_dir / "config.json").is_file()
            self._finished = time.time()
            if status == "done":
                self._progress = 1.0

    # -- any session
    def start(self) -> None:
        ensure_ml()  # in the starting session's thread, before the job's thread loads a model
        self.thread.start()

    def stop(self) -> None:
        with self._lock:
            if self._status in ("starting", "running"):
                self._status = "stopping"
                self._phase = self.stopping
        self.stop_event.set()

    def snapshot(self):
        raise NotImplementedError

    def _common(self) -> dict[str, Any]:
        """The snapshot fields every kind has (call with the lock held)."""
        last = self._steps[-1] if self._steps else {}
        return dict(id=self.id, owner=self.owner, model_name=self.request.model_name,
                    out_dir=str(self.request.out_dir), config=asdict(self.request.config), status=self._status,
                    phase=self._phase, progress=self._progress, step=int(last.get("step", 0)),
                    total_steps=int(last.get("total_steps", 0)),
                    eta_s=last.get("eta_s") if self._status in ACTIVE else None,
                    elapsed_s=(self._finished or time.time()) - self._started, steps=list(self._steps),
                    evals=list(self._evals), error=self._error, saved=self._saved)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker ends (tests); True when it did."""
        self.thread.join(timeout)
        return not self.thread.is_alive()


def _phase_text(event: dict[str, Any]) -> str:
    """A phase event in words, with the time left when the phase knows it (and is not done)."""
    text = str(event.get("phase", ""))
    progress = event.get("progress")
    if event.get("eta_s") is not None and (progress is None or progress < 1):
        text += f", about {format_duration(event['eta_s'])} left"
    return text


class TrainingJob(Job):
    """Training a reward model with rmcore.training.train (the Train page)."""

    what = "a training job"
    doing = "Training"
    thread_name = "train"

    def __init__(self, request: JobRequest, owner: str):
        super().__init__(request, owner)
        self._phase_progress: float | None = None
        self._plan: str | None = None
        self._phase_seconds: dict[str, float] = {}
        self._phase_kind, self._phase_since = "", time.time()

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            kind = event.get("event")
            if kind == "phase":
                self._on_phase(event)
            elif kind == "done":
                self._phase_seconds = dict(event.get("phase_seconds") or {})
            elif kind == "step":
                if self._status == "starting":
                    self._status = "running"
                self._phase = "training"
                self._phase_progress = None
                self._progress = float(event.get("progress", 0.0))
                self._steps.append({k: v for k, v in event.items() if k != "event"})
            elif kind == "eval":
                self._evals.append({k: v for k, v in event.items() if k != "event"})

    def _on_phase(self, event: dict[str, Any]) -> None:
        """A phase event: the plan is kept apart (it is shown above the bar); a new kind of phase restarts
        the clock that the bar of a phase without progress of its own runs on."""
        text = str(event.get("phase", ""))
        if text.startswith("plan: "):
            self._plan = text.removeprefix("plan: ")
            text = "planned the run; preparing"
        kind = text.split("(")[0].strip()
        if kind != self._phase_kind:
            self._phase_kind, self._phase_since = kind, time.time()
        self._phase = _phase_text({**event, "phase": text})
        progress = event.get("progress")
        self._phase_progress = None if progress is None else float(progress)

    def _work(self) -> tuple[str, str]:
        from rmcore.training.train import train  # torch: only a running job needs it (app.jobs is on the first paint)

        request = self.request
        result = train(request.config, request.train_groups, request.out_dir, eval_groups=request.eval_groups,
                       on_step=self._on_event, stop_event=self.stop_event, resume=request.resume,
                       data_summary=request.data_summary)
        saved = (request.out_dir / "config.json").is_file()
        if request.eval_groups and saved:
            atomic_write_text(request.out_dir / HELD_OUT_FILE, write_ranked_jsonl(request.eval_groups))
        _keep_training_data(request, resumable=result.stopped and saved)
        if not saved:
            phase = "stopped before the first training step; nothing was saved"
        elif result.stopped:
            phase = f"stopped at step {result.steps} of {result.total_steps}; model and checkpoint saved"
        else:
            phase = "finished; model saved" + _auto_outcome(request.out_dir)
        return ("stopped" if result.stopped else "done"), phase

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return JobSnapshot(**self._common(), data_name=self.request.data_name,
                               phase_progress=self._phase_progress,
                               train_prompts=len(self.request.train_groups),
                               eval_prompts=len(self.request.eval_groups), plan=self._plan,
                               phase_seconds=dict(self._phase_seconds),
                               phase_elapsed_s=time.time() - self._phase_since,
                               budget_s=float(self.request.config.time_budget_s or 0.0),
                               expected_s=dict(self.request.expected_s))


def _auto_outcome(out_dir: Path) -> str:
    """--mode auto: which of the head and the top blocks was kept, and why (from the saved rmcore.json)."""
    try:
        auto = read_metadata(out_dir).get("auto")
    except (OSError, ValueError, RmcoreError):
        return ""
    return f"; {auto['why']}" if isinstance(auto, dict) and auto.get("why") else ""


class JobManager:
    """Holds the server's one job, of either kind (the running one, or the last one that ended)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._job: Job | None = None

    def current(self, kind: type[Job] | None = None) -> Job | None:
        """The job, or None; with `kind`, only a job of that kind (a page shows its own kind)."""
        job = self._job
        return job if job is not None and (kind is None or isinstance(job, kind)) else None

    def running(self) -> Job | None:
        """The job while it runs (any kind): nothing else may start until it ends."""
        job = self._job
        return job if job is not None and job.snapshot().active else None

    def start(self, request, owner: str) -> Job:
        """Start `request.new_job(owner)`: refused with JobBusy while any job runs, and refused when
        the output folder holds something (unless the request resumes the run saved there)."""
        with self._lock:
            if self._job is not None and self._job.snapshot().active and self._job.thread.is_alive():
                raise JobBusy(self._job)
            out_dir = request.out_dir
            if not request.resume and out_dir.exists() and any(out_dir.iterdir()):
                raise FileExistsError(f"a model named '{request.model_name}' already exists; choose another name")
            out_dir.mkdir(parents=True, exist_ok=True)  # reserve the name
            job = request.new_job(owner)
            self._job = job
        job.start()
        return job

    def stop(self, owner: str) -> bool:
        """Stop the running job if `owner` started it; False when there is nothing of theirs to stop."""
        job = self._job
        if job is None or job.owner != owner or not job.snapshot().active:
            return False
        job.stop()
        return True

    def forget(self, owner: str) -> None:
        """Clear a finished job from the page (its model stays on disk)."""
        with self._lock:
            if self._job is not None and self._job.owner == owner and not self._job.snapshot().active:
                self._job = None


def _keep_training_data(request: JobRequest, resumable: bool) -> None:
    """A stopped run keeps its training prompts beside its checkpoint; a finished one no longer needs them."""
    path = request.out_dir / TRAIN_DATA_FILE
    if resumable:
        atomic_write_text(path, write_ranked_jsonl(request.train_groups))
    elif path.is_file() and not (request.out_dir / "checkpoint").exists():
        path.unlink()  # written by the app for the resume that has now finished


def resumable(model_dir: Path) -> bool:
    """A stopped run in `model_dir` that the app can continue: its checkpoint and its training prompts."""
    model_dir = Path(model_dir)
    return (model_dir / "checkpoint" / "state.json").is_file() and (model_dir / TRAIN_DATA_FILE).is_file()


def resume_request(model_dir: Path) -> JobRequest:
    """What continues the stopped run in `model_dir`: its settings, training and held-out prompts."""
    model_dir = Path(model_dir)
    metadata = read_metadata(model_dir)
    if not isinstance(metadata.get("config"), dict):
        raise ModelError(f"{model_dir}: no settings in {METADATA_FILE} to resume with; start the run again")
    known = {f for f in TrainConfig.__dataclass_fields__}
    config = TrainConfig(**{k: v for k, v in metadata.get("config", {}).items() if k in known})
    train_groups = read_preferences(model_dir / TRAIN_DATA_FILE).groups
    eval_groups = read_held_out(model_dir) or []
    data = metadata.get("data", {})
    return JobRequest(config, train_groups, eval_groups, model_dir, model_dir.name, str(data.get("file", "")),
                      {k: v for k, v in data.items() if k in ("file", "format", "prompts", "comparisons")},
                      resume=True)


_MANAGER = JobManager()


def manager() -> JobManager:
    """The one manager of this server process (module state lives as long as the server)."""
    return _MANAGER


def read_held_out(model_dir: Path) -> list[RankedGroup] | None:
    """The held-out prompts saved beside a model trained in the app, if any."""
    path = Path(model_dir) / HELD_OUT_FILE
    if not path.is_file():
        return None
    return read_preferences(path, display_name=f"{Path(model_dir).name}/{HELD_OUT_FILE}").groups


def metrics_history(model_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(steps, evals) from a saved model's metrics.jsonl, to redraw its curves."""
    path = Path(model_dir) / "metrics.jsonl"
    steps, evals = [], []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            (evals if row.get("event") == "eval" else steps).append(row)
    return steps, evals
