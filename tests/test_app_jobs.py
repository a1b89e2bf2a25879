"""The app's one job manager: one job per server across training and policy jobs (no model loaded here)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import jobs  # noqa: E402
from app.policy_jobs import PolicyJob, PolicyJobRequest, PolicySnapshot  # noqa: E402


@dataclass
class Settings:
    steps: int = 1


class Waiting(PolicyJob):
    """A policy job that runs until stopped, without loading any model."""

    def _work(self) -> tuple[str, str]:
        self._on_event({"event": "step", "step": 1, "total_steps": 4, "progress": 0.25, "round": 1})
        self.stop_event.wait(60)
        return "stopped", "stopped"


@dataclass
class WaitingRequest(PolicyJobRequest):
    def new_job(self, owner: str) -> Waiting:
        return Waiting(self, owner)


@pytest.fixture()
def manager(monkeypatch):
    fresh = jobs.JobManager()
    monkeypatch.setattr(jobs, "_MANAGER", fresh)
    yield fresh
    job = fresh.current()
    if job is not None:
        job.stop()
        job.wait(30)


def test_one_job_per_server_whatever_its_kind(manager, tmp_path):
    from rmcore.training.config import TrainConfig

    waiting = manager.start(WaitingRequest(Settings(), [], [], tmp_path / "policy", "policy"), "me")
    assert jobs.manager() is manager and manager.running() is waiting
    assert manager.current(PolicyJob) is waiting and manager.current(jobs.TrainingJob) is None
    snapshot = waiting.snapshot()
    assert isinstance(snapshot, PolicySnapshot) and snapshot.model_name == "policy" and snapshot.active
    training = jobs.JobRequest(TrainConfig(), [], [], tmp_path / "rm", "rm")
    with pytest.raises(jobs.JobBusy, match=r"an RLHF job \('policy'\) is already running") as busy:
        manager.start(training, "someone-else")  # a training job waits for the policy job
    assert busy.value.snapshot.owner == "me" and not (tmp_path / "rm").exists()
    policy = PolicyJobRequest(Settings(), ["a"], [], tmp_path / "policy2", "policy2")
    with pytest.raises(jobs.JobBusy, match="one job runs at a time"):
        manager.start(policy, "me")  # and so does a second policy job, even the owner's
    assert not manager.stop("someone-else") and manager.stop("me")  # only the owner stops it
    assert waiting.wait(30) and waiting.snapshot().status == "stopped" and manager.running() is None
    manager.forget("me")
    assert manager.current() is None


def test_a_name_in_use_is_refused_before_anything_starts(manager, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="'taken' already exists"):
        manager.start(WaitingRequest(Settings(), [], [], tmp_path / "taken", "taken"), "me")
    assert manager.current() is None and (tmp_path / "taken" / "notes.txt").read_text() == "mine"


@pytest.mark.slow  # the app through AppTest: a few seconds
def test_the_train_page_waits_for_a_running_policy_job(manager, tiny_model_dir, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("RMCORE_APP_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("RMCORE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("RMCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RMCORE_DEVICE", "cpu")
    manager.start(WaitingRequest(Settings(), [], [], tmp_path / "models" / "tuned", "tuned"), "someone")
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120).run()
    at.switch_page("views/data.py").run()
    at.button(key="load_demo").click().run()
    at.switch_page("views/train.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.button(key="start_training").disabled
    assert any("A policy is being fine-tuned on this server" in i.value and "tuned" in i.value for i in at.info)


def test_a_finished_auto_run_says_which_stage_was_kept(tmp_path):
    (tmp_path / "rmcore.json").write_text('{"auto": {"kept": "head", "why": "the head is kept: held-out 0.8 '
                                          'against the top blocks\' 0.7"}}')
    assert jobs._auto_outcome(tmp_path) == "; the head is kept: held-out 0.8 against the top blocks' 0.7"
    (tmp_path / "rmcore.json").write_text('{"auto": null}')
    assert jobs._auto_outcome(tmp_path) == ""
    (tmp_path / "rmcore.json").write_text("{broken")
    assert jobs._auto_outcome(tmp_path) == "", "a damaged file says nothing more, it does not fail the job"
