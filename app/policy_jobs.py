"""The background RLHF job of the Policy page: a kind of app.jobs job, in a worker thread with no Streamlit calls.

It shares app/jobs.py's one manager (`manager()`), so one job runs per server whatever its kind: a
policy job is not started while a reward model trains, nor the other way round. The page polls
`manager().current(PolicyJob).snapshot()` from a fragment every second; the job survives page
changes; Stop sets a `threading.Event` that rmcore.policy.rlhf checks at every step, saving a checkpoint
and the policy so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.jobs import ACTIVE, Job
from rmcore.core.errors import ModelError
from rmcore.core.folders import POLICY_METADATA_FILE, read_metadata


@dataclass
class PolicyJobRequest:
    config: Any  # rmcore.policy.rlhf.RLHFConfig (imported lazily: torch)
    train_prompts: list
    eval_prompts: list
    out_dir: Path
    model_name: str  # the policy's folder name in the models folder
    resume: bool = False  # the app starts every policy afresh (the CLI resumes: rmcore rlhf --resume)

    def new_job(self, owner: str) -> PolicyJob:
        return PolicyJob(self, owner)


@dataclass
class PolicySnapshot:
    id: str
    owner: str
    model_name: str
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
    phase_progress: float | None = None  # (as a training job's: the sidebar shows either kind)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


class PolicyJob(Job):
    """Fine-tuning a policy toward a reward model with rmcore.policy.rlhf (the Best-of-n & RLHF page)."""

    what = "an RLHF job"
    doing = "Fine-tuning the policy"
    thread_name = "policy"
    stopping = "stopping at the next step; saving a checkpoint and the policy so far"

    def __init__(self, request: PolicyJobRequest, owner: str):
        super().__init__(request, owner)
        self._before_after: list[dict[str, Any]] = []

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

    def _work(self) -> tuple[str, str]:
        from rmcore.policy.rlhf import train_policy  # torch: only a running job needs it (Export lists policies too)

        request = self.request
        result = train_policy(request.config, request.train_prompts, request.eval_prompts, request.out_dir,
                              on_step=self._on_event, stop_event=self.stop_event)
        with self._lock:
            self._before_after = result.before_after
        if result.stopped:
            return "stopped", f"stopped at step {result.steps}; policy and checkpoint saved"
        return "done", "finished; policy saved"

    def snapshot(self) -> PolicySnapshot:
        with self._lock:
            return PolicySnapshot(**self._common(), before_after=list(self._before_after))


def list_policies(models_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """(name, rmcore_policy.json) of the policies saved in the models folder, newest first."""
    found = []
    for child in sorted(Path(models_dir).iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        if child.name.startswith(".") or not (child / POLICY_METADATA_FILE).is_file():
            continue
        try:
            found.append((child.name, read_metadata(child, POLICY_METADATA_FILE)))
        except ModelError:
            continue  # a damaged file: not offered (rmcore says what is wrong when the folder is used)
    return found
