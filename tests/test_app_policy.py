"""The Best-of-n & RLHF page through AppTest, on tiny random models (no download)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from app import jobs, policy_charts, policy_jobs  # noqa: E402
from rmcore.policy.best_of_n import bon_curve  # noqa: E402

APP = str(ROOT / "app" / "main.py")
PAGE = "views/policy.py"
TIMEOUT = 120


@pytest.fixture()
def app_env(tiny_model_dir, tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("RMCORE_APP_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("RMCORE_APP_GENERATOR", str(tiny_model_dir))
    monkeypatch.setenv("RMCORE_MODELS_DIR", str(models))
    monkeypatch.setenv("RMCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RMCORE_DEVICE", "cpu")
    manager = jobs.JobManager()  # the server's one manager, of training and policy jobs alike
    monkeypatch.setattr(jobs, "_MANAGER", manager)
    yield models
    job = manager.current()
    if job is not None:
        job.stop()
        job.wait(120)


@pytest.fixture()
def with_reward_models(app_env):
    from rmcore.model.tiny import build_tiny_reward_model

    build_tiny_reward_model(app_env / "rm", seed=1)
    build_tiny_reward_model(app_env / "gold", seed=2)
    return app_env


def open_policy_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page(PAGE).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_page_without_a_reward_model_says_what_to_do(app_env):
    at = open_policy_page()
    assert at.title[0].value == "Best-of-n & RLHF"
    assert any("Goodhart" in i.value for i in at.info)
    assert any("No trained reward model yet" in i.value for i in at.info)


def test_best_of_n_curve_is_drawn_with_the_gold_judge(with_reward_models):
    at = open_policy_page()
    at.selectbox(key="policy_gold").set_value([o for o in at.selectbox(key="policy_gold").options if o != "(none)"][0])
    at.number_input(key="bon_prompts").set_value(2)
    at.selectbox(key="bon_n").set_value(4)
    at.selectbox(key="bon_max_new").set_value(32)
    at.run()
    assert not at.get("plotly_chart"), "nothing is sampled before the user asks"
    at.button(key="bon_run").click().run()
    assert not at.exception, [e.message for e in at.exception]
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    spec = json.loads(charts[0].proto.spec)
    names = {trace.get("name") for trace in spec["data"]}
    assert {"proxy (the reward model)", "gold (independent judge)", "length of the pick"} <= names
    table = at.dataframe[0].value
    assert list(table["n"]) == [1, 2, 4]


@pytest.mark.slow
def test_rejection_sampling_job_runs_in_the_background_and_shows_before_after(with_reward_models):
    at = open_policy_page()
    at.radio(key="policy_source").set_value("type them").run()
    at.text_area(key="policy_typed").input("Say hi.\nName a prime.\nWhat is 2 + 2?").run()
    at.number_input(key="rlhf_prompts").set_value(3)
    at.selectbox(key="rlhf_n").set_value(2)
    at.selectbox(key="rlhf_max_new").set_value(24)
    at.number_input(key="rlhf_eval_samples").set_value(1)
    at.text_input(key="rlhf_name").input("tiny-policy")
    at.run()
    at.button(key="rlhf_start").click().run()
    assert not at.exception, [e.message for e in at.exception]
    job = jobs.manager().current(policy_jobs.PolicyJob)
    assert job is not None
    with pytest.raises(jobs.JobBusy):  # one job per server
        jobs.manager().start(job.request, "someone-else")
    assert job.wait(300), "the job did not finish"
    snap = job.snapshot()
    assert snap.status == "done", snap.error
    assert (with_reward_models / "tiny-policy" / "rmcore_policy.json").is_file()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("Held-out answers before and after" in m.value for m in at.markdown)
    assert any(c.proto.id.endswith("rlhf_curves") for c in at.get("plotly_chart"))
    # the Export page offers the policy
    at.switch_page("views/export.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="export_policy").value == "tiny-policy"


def test_stop_ends_the_job_with_the_policy_and_a_checkpoint(with_reward_models):
    from rmcore.policy.rlhf import RLHFConfig

    models = with_reward_models
    config = RLHFConfig(reward_model=str(models / "rm"), policy=os.environ["RMCORE_APP_GENERATOR"], rounds=3, n=2,
                        max_new_tokens=4, eval_samples=1, batch_size=1)
    request = policy_jobs.PolicyJobRequest(config, ["a", "b", "c", "d"], ["e"], models / "stopped", "stopped")
    job = jobs.manager().start(request, "me")
    for _ in range(600):
        if job.snapshot().steps:
            break
        job.wait(0.1)
    assert jobs.manager().stop("me")
    assert job.wait(120)
    snap = job.snapshot()
    assert snap.status == "stopped", snap.error
    assert (models / "stopped" / "checkpoint" / "state.json").is_file() and snap.saved


def test_chart_functions_are_pure_and_label_what_they_show():
    evals = [{"step": 0, "reward_mean": 0.0, "reward_std": 2.0, "gold_mean": 1.0, "gold_std": 1.0, "kl": 0.0,
              "length_mean": 40.0},
             {"step": 4, "reward_mean": 2.0, "reward_std": 2.0, "gold_mean": 0.5, "gold_std": 1.0, "kl": 0.3,
              "length_mean": 60.0}]
    fig = policy_charts.rlhf_curves(evals)
    by_name = {trace.name: trace for trace in fig.data}
    assert list(by_name["proxy (optimised)"].y) == [0.0, 1.0]  # in sd of the starting policy
    assert list(by_name["gold (judge only)"].y) == [0.0, -0.5]
    curve = bon_curve([[0.0, 1.0], [2.0, 0.0]], [[1, 2], [3, 4]])
    rows = policy_charts.bon_table(curve.rows())
    assert [r["n"] for r in rows] == [1, 2] and "gold reward" not in rows[0]
