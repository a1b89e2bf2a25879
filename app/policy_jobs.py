"""The background RLHF job of the Policy page: one per server, in a worker thread with no Streamlit calls.

Like app/jobs.py's training job: the page starts it and polls `policy_manager().current().snapshot()`
from a fragment every second; it survives page changes; Stop sets a `threading.Event` that
rmcore.rlhf checks at every step, saving a checkpoint and the policy so far. A policy job is not
started while a reward-model training job runs (and the other way round is shown on the Train
page's busy check only for training jobs), so two runs never compete for the same CPU.
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
from rmcore.errors import RmcoreError

log = logging.getLogger(__name__)
ACTIVE = ("starting", "running", "stopping")


class PolicyJobBusy(RuntimeError):
    """A job (policy or reward-model training) already runs on this server."""


@dataclass
class PolicyJobRequest:
    config: Any  # rmcore.rlhf.RLHFConfig (imported lazily: torch)
    train_prompts: list
    eval_prompts: list
    out_dir: Path
    name: str


@dataclass
class PolicySnapshot:
    id: str
    owner: str
    name: str
    out_dir: str
    config: dict[str, Any]
    status: str  # starting, running, stopping, done, stopped, failed
    phase: str
    progress: float
    step: int
    total_steps: int
    eta_s: float | None
    elapsed_s: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    before_after: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    saved: bool = False

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


class PolicyJob:
    def __init__(self, request: PolicyJobRequest, owner: str):
        self.id = uuid.uuid4().hex[:12]
        self.owner = owner
        self.request = request
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._status, self._phase, self._progress = "starting", "starting", 0.0
        self._steps: list[dict[str, Any]] = []
        self._evals: list[dict[str, Any]] = []
        self._before_after: list[dict[str, Any]] = []
        self._error: str | None = None
        self._started, self._finished = time.time(), None
        self._saved = False
        self.thread = threading.Thread(target=self._run, name=f"rmcore-policy-{self.id}", daemon=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            kind = event.get("event")
            if event.get("progress") is not None:
                self._progress = float(event["progress"])
            if kind == "phase":
                self._phase = str(event.get("phase", ""))
            elif kind == "step":
                if self._status == "starting":
                    self._status = "running"
                self._phase = f"fine-tuning (round {event.get('round', '?')})"
                self._steps.append({k: v for k, v in event.items() if k != "event"})
            elif kind == "eval":
                if self._status == "starting":
                    self._status = "running"
                self._evals.append({k: v for k, v in event.items() if k != "event"})

    def _run(self) -> None:
        request = self.request
        try:
            from rmcore.rlhf import train_policy

            result = train_policy(request.config, request.train_prompts, request.eval_prompts, request.out_dir,
                                  on_step=self._on_event, stop_event=self.stop_event)
            status = "stopped" if result.stopped else "done"
            phase = (f"stopped at step {result.steps}; policy and checkpoint saved" if result.stopped
                     else "finished; policy saved")
            rows, error = result.before_after, None
        except RmcoreError as exc:
            status, phase, rows, error = "failed", "failed", [], str(exc)
        except Exception as exc:  # a bug: keep the server alive, log it, one line for the user
            log.error("policy job %s failed:\n%s", self.id, traceback.format_exc())
            status, phase, rows, error = "failed", "failed", [], f"{type(exc).__name__}: {exc}"
        if request.out_dir.is_dir() and not any(request.out_dir.iterdir()):
            request.out_dir.rmdir()  # nothing saved: free the reserved name
        with self._lock:
            self._status, self._phase, self._error, self._before_after = status, phase, error, rows
            self._saved = (request.out_dir / "config.json").is_file()
            self._finished = time.time()
            if status == "done":
                self._progress = 1.0

    def start(self) -> None:
        ensure_ml()
        self.thread.start()

    def stop(self) -> None:
        with self._lock:
            if self._status in ("starting", "running"):
                self._status = "stopping"
                self._phase = "stopping at the next step; saving a checkpoint and the policy so far"
        self.stop_event.set()

    def snapshot(self) -> PolicySnapshot:
        with self._lock:
            last = self._steps[-1] if self._steps else {}
            end = self._finished or time.time()
            return PolicySnapshot(
                id=self.id, owner=self.owner, name=self.request.name, out_dir=str(self.request.out_dir),
                config=asdict(self.request.config), status=self._status, phase=self._phase, progress=self._progress,
                step=int(last.get("step", 0)), total_steps=int(last.get("total_steps", 0)),
                eta_s=last.get("eta_s") if self._status in ACTIVE else None, elapsed_s=end - self._started,
                steps=list(self._steps), evals=list(self._evals), before_after=list(self._before_after),
                error=self._error, saved=self._saved,
            )

    def wait(self, timeout: float | None = None) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


class PolicyJobManager:
    """Holds the server's one policy job (running, or the last one that ended)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._job: PolicyJob | None = None

    def current(self) -> PolicyJob | None:
        return self._job

    def start(self, request: PolicyJobRequest, owner: str) -> PolicyJob:
        from app.jobs import manager as training_manager

        with self._lock:
            if self._job is not None and self._job.snapshot().active and self._job.thread.is_alive():
                raise PolicyJobBusy(f"an RLHF job ('{self._job.request.name}') is already running on this server; "
                                    "one job runs at a time")
            training = training_manager().current()
            if training is not None and training.snapshot().active:
                raise PolicyJobBusy("a reward-model training job is running on this server; start this when it ends")
            if request.out_dir.exists() and any(request.out_dir.iterdir()):
                raise FileExistsError(f"a model named '{request.name}' already exists; choose another name")
            request.out_dir.mkdir(parents=True, exist_ok=True)
            job = PolicyJob(request, owner)
            self._job = job
        job.start()
        return job

    def stop(self, owner: str) -> bool:
        job = self._job
        if job is None or job.owner != owner or not job.snapshot().active:
            return False
        job.stop()
        return True

    def forget(self, owner: str) -> None:
        with self._lock:
            if self._job is not None and self._job.owner == owner and not self._job.snapshot().active:
                self._job = None


_MANAGER = PolicyJobManager()


def policy_manager() -> PolicyJobManager:
    return _MANAGER


def list_policies(models_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """(name, rmcore_policy.json) of the policies saved in the models folder, newest first."""
    from rmcore.rlhf import POLICY_METADATA_FILE

    found = []
    for child in sorted(Path(models_dir).iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        meta_file = child / POLICY_METADATA_FILE
        if child.name.startswith(".") or not meta_file.is_file():
            continue
        try:
            found.append((child.name, json.loads(meta_file.read_text())))
        except (OSError, ValueError):
            continue
    return found
