"""The over-optimisation lesson on the Best-of-n & RLHF page: its chart alone, and the page (AppTest)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from app import jobs, lesson, lesson_charts  # noqa: E402
from app.lesson_jobs import LessonJob, LessonJobRequest  # noqa: E402
from rmcore.analysis.overoptimisation import fit_best_of_n_points  # noqa: E402
from rmcore.policy.best_of_n import kl_best_of_n  # noqa: E402
from rmcore.policy.lesson import LessonConfig, run_lesson  # noqa: E402
from rmcore.policy.lesson_data import LESSON_SEED  # noqa: E402

APP = str(ROOT / "app" / "main.py")
PAGE = "views/policy.py"
TINY = {"prompts": ["Say hello.", "Name a colour."], "samples_per_prompt": 4, "max_new_tokens": 6, "epochs": 1}


def synthetic_result(alpha: float = 1.0, beta: float = 0.8) -> dict:
    """A lesson result whose gold follows d(alpha - beta d) exactly over its value at n = 1."""
    ns = [1, 2, 4, 8, 16, 32]
    d = np.sqrt([float(kl_best_of_n(n)) for n in ns])
    gold = 0.5 + d * (alpha - beta * d)
    proxy = 2.0 + 1.5 * d
    points = [{"n": n, "kl": float(x * x), "d": float(x), "proxy": float(p), "proxy_se": 0.1, "gold": float(g),
               "gold_se": 0.1, "trait_share": 0.05 * (i + 1), "trait_share_se": 0.01}
              for i, (n, x, p, g) in enumerate(zip(ns, d, proxy, gold))]
    return {"points": points, "trait": "the answer ends on an exclamation mark", "examples": [],
            "config": {"prompts": ["a", "b"]},
            "gold_fit": fit_best_of_n_points(ns, list(gold), [0.1] * len(ns)).to_dict(),
            "proxy_fit": fit_best_of_n_points(ns, list(proxy), [0.1] * len(ns)).to_dict(),
            "turn": {"proxy_rises": True, "gold_turns": True, "trait_rises": True, "gold_rises_first": True,
                     "all": True, "gold_peak_n": 2, "gold_drop": 0.6, "gold_drop_se": 0.2}}


def test_the_chart_draws_points_fits_the_peak_and_the_trait_share():
    result = synthetic_result(alpha=1.0, beta=0.8)
    figure = lesson_charts.lesson_figure(result)
    traces = {trace.name: trace for trace in figure.data}
    assert {"proxy (measured)", "gold (measured)", "proxy fit d(α − βd)", "gold fit d(α − βd)",
            "gold's fitted peak", "picks with the trait (%)"} <= set(traces)
    assert traces["picks with the trait (%)"].yaxis == "y2", "the trait's share has its own axis"
    fit = traces["gold fit d(α − βd)"]
    assert np.allclose(fit.y, np.asarray(fit.x) * (1.0 - 0.8 * np.asarray(fit.x)), atol=1e-6), \
        "the drawn fit is the known curve"
    assert traces["gold's fitted peak"].x[0] == pytest.approx(1.0 / (2 * 0.8), rel=1e-6)
    assert traces["gold's fitted peak"].y[0] == pytest.approx(1.0**2 / (4 * 0.8), rel=1e-6)


def test_a_fit_that_does_not_turn_draws_no_peak_and_says_so():
    result = synthetic_result(alpha=1.0, beta=-0.3)
    names = {trace.name for trace in lesson_charts.lesson_figure(result).data}
    assert "gold's fitted peak" not in names
    assert lesson_charts.fit_rows(result)[1]["fitted peak"] == "no turn (β ≤ 0)"


@pytest.fixture()
def app_env(tiny_model_dir, tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("RMCORE_APP_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("RMCORE_APP_GENERATOR", str(tiny_model_dir))
    monkeypatch.setenv("RMCORE_MODELS_DIR", str(models))
    monkeypatch.setenv("RMCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RMCORE_DEVICE", "cpu")
    monkeypatch.setattr(lesson, "LESSON_OPTIONS", TINY)
    manager = jobs.JobManager()  # the server's one job slot, fresh for each test
    monkeypatch.setattr(jobs, "_MANAGER", manager)
    yield models
    job = manager.current()
    if job is not None and job.thread.ident is not None:  # (a test may hold a job it never started)
        job.stop()
        job.wait(120)


def open_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.switch_page(PAGE).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def lesson_chart(at: AppTest) -> dict | None:
    charts = [c for c in at.get("plotly_chart") if c.proto.id.endswith("lesson_curve")]
    return json.loads(charts[0].proto.spec) if charts else None


def test_the_page_runs_the_lesson_and_shows_it_again_on_the_next_visit(app_env, tiny_model_dir):
    at = open_page()
    assert lesson_chart(at) is None, "nothing is shown before a lesson ran"
    at.button(key="lesson_run").click().run()
    assert not at.exception, [e.message for e in at.exception]
    job = jobs.manager().current(LessonJob)
    assert job is not None, "the button starts the lesson as the server's background job"
    assert job.wait(300), "the lesson did not finish"
    assert job.snapshot().status == "done", job.snapshot().error
    at.run()  # the page polls the job; a rerun after it ended draws the lesson from its folder
    assert not at.exception, [e.message for e in at.exception]
    spec = lesson_chart(at)
    assert spec is not None and {"gold (measured)", "picks with the trait (%)"} <= {t["name"] for t in spec["data"]}
    assert lesson.finished_result(lesson.lesson_dir(LESSON_SEED)) is not None, "the lesson is kept in its folder"
    again = open_page()  # a new session: the finished lesson is read back, nothing runs
    assert lesson_chart(again) is not None
    assert again.button(key="lesson_run").label == "Run the over-optimisation lesson again"
    criteria = [d.value for d in again.dataframe if "criterion" in d.value.columns][0]
    assert len(criteria) == 4 and set(criteria["met"]) <= {"yes", "no"}


def test_the_page_shows_a_lesson_the_command_line_ran_into_its_folder(app_env, tiny_model_dir):
    config = LessonConfig(seed=3, policy=str(tiny_model_dir), reward_model=str(tiny_model_dir), **TINY)
    result = run_lesson(config, lesson.lesson_dir(3))
    at = open_page()
    at.number_input(key="lesson_seed").set_value(3).run()
    assert not at.exception, [e.message for e in at.exception]
    spec = lesson_chart(at)
    gold = [t for t in spec["data"] if t["name"] == "gold (measured)"][0]
    assert gold["y"] == pytest.approx([p["gold"] - result.points[0]["gold"] for p in result.points]), "gains over n = 1"
    assert any("before and after the turn" in m.value for m in at.markdown)


def tiny_request(tiny_model_dir, seed: int = 5) -> LessonJobRequest:
    config = LessonConfig(seed=seed, policy=str(tiny_model_dir), reward_model=str(tiny_model_dir), **TINY)
    return LessonJobRequest(config, lesson.lesson_dir(seed), f"lesson, seed {seed}")


def test_the_job_turns_the_lessons_lines_into_one_bar_with_the_time_left(app_env, tiny_model_dir):
    job = LessonJob(tiny_request(tiny_model_dir), "me")  # never started: only its events are fed
    job._on_event({"event": "step", "step": 5, "total_steps": 10, "eta_s": 3.0})
    assert job.snapshot().progress == pytest.approx(0.5 / 4), "half the proxy's steps: an eighth of the lesson"
    job._on_event({"event": "phase", "phase": "lesson: sampling the policy's answers (50%)", "progress": 0.5,
                   "eta_s": 30.0})
    snap = job.snapshot()
    assert snap.progress == pytest.approx(2.5 / 4) and snap.status == "running"
    assert snap.phase.startswith("sampling the policy's answers") and "left" in snap.phase
    assert snap.eta_s == 30.0 and snap.phase_progress == snap.progress


def test_stop_ends_the_lesson_and_keeps_no_result(app_env, tiny_model_dir):
    request = tiny_request(tiny_model_dir)
    job = jobs.manager().start(request, "me")
    assert jobs.manager().stop("me")
    assert job.wait(300), "Stop did not end the lesson"
    assert job.snapshot().status == "stopped", job.snapshot().error
    assert lesson.finished_result(request.out_dir) is None, "a stopped lesson is not shown as finished"
    again = jobs.manager().start(request, "me")  # its folder is reused, not refused as taken
    assert again.wait(300) and again.snapshot().status == "done", again.snapshot().error
    assert lesson.finished_result(request.out_dir) is not None


def test_while_the_lesson_runs_the_page_shows_its_bar_and_stop_and_starts_no_second_one(app_env, tiny_model_dir):
    job = LessonJob(tiny_request(tiny_model_dir, seed=0), "someone")  # a running job, held without its thread
    job._on_event({"event": "phase", "phase": "lesson: sampling the policy's answers (40%)", "progress": 0.4,
                   "eta_s": 90.0})
    jobs.manager()._job = job
    at = open_page()
    assert at.button(key="lesson_run").disabled, "one job per server"
    bars = [b.proto.text for b in at.get("progress")]
    assert any(text.startswith("Sampling the policy's answers") and "left" in text for text in bars), bars
    job.owner = at.session_state["rm_session_id"]  # now this session's run: it may stop it
    at.run()
    assert [b.label for b in at.button if b.key == "lesson_stop"], "its owner sees Stop"
    assert jobs.manager().stop(job.owner)  # what Stop does (AppTest cannot rerun a fragment alone)
    assert job.stop_event.is_set() and job.snapshot().status == "stopping"
    with pytest.raises(KeyboardInterrupt):  # the lesson's next stage line ends it
        job._on_event({"event": "phase", "phase": "lesson: both judges score every answer", "progress": 0.0})
    jobs.manager()._job = None  # (its thread never ran: nothing to wait for)


def test_the_reading_says_why_the_gold_turns_from_the_judges_numbers():
    from app.lesson import judges_line

    result = synthetic_result()
    assert judges_line(result) is None  # a lesson saved before the judges were measured
    result["judges"] = {"trait_share": 0.1, "gold_per_proxy": 0.4, "trait_cost": -0.8, "proxy_trait_effect": 1.2,
                        "flaw_variance_share": 0.23}
    line = judges_line(result)
    assert "23%" in line and "0.800 less" in line
    assert line.startswith("**Why it turns.**") == result["turn"]["gold_turns"]
    result["turn"]["gold_turns"] = False  # a seed whose gold never turned (seed 2 of the bench)
    line = judges_line(result)
    assert line.startswith("**Why it did not turn here.**") and "0.800 less" in line and "starts the turn" not in line
    result["judges"]["trait_cost"] = 0.3
    assert "cannot turn" in judges_line(result)


def test_an_answer_with_bytes_that_do_not_decode_is_shown_without_replacement_characters():
    from app.lesson import readable

    assert readable("Hello \ufffd world\ufffd") == ("Hello  world", 2)
    assert readable("plain") == ("plain", 0)
