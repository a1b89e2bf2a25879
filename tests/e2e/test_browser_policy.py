"""The Best-of-n & RLHF page in a real browser (Chromium + Playwright), on tiny random models.

Draws a best-of-n curve, starts a rejection-sampling job, watches its curve, stops it, and saves
screenshots (tests/e2e/screenshots/policy-*.png, or $RMCORE_SCREENSHOTS) for a person to look at.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_browser import BROWSER_ARGS, CHROMIUM, ROOT, SCREENSHOTS, free_port, screenshot, wait_for_plots

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def policy_server(tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (make browser installs Debian's)")
    from rmcore.model.tiny import build_tiny_model, build_tiny_reward_model

    work = tmp_path_factory.mktemp("e2e-policy")
    tiny = build_tiny_model(work / "tiny-llama")
    models = work / "models"
    build_tiny_reward_model(models / "proxy-rm", seed=1)
    build_tiny_reward_model(models / "gold-rm", seed=2)
    cached_lesson(tiny, models)
    port = free_port()
    env = dict(os.environ, RMCORE_APP_BASE_MODEL=str(tiny), RMCORE_APP_GENERATOR=str(tiny),
               RMCORE_MODELS_DIR=str(models), RMCORE_CACHE=str(work / "cache"), RMCORE_DEVICE="cpu",
               HF_HUB_OFFLINE="1")
    log = open(work / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
                                "--server.port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"streamlit did not start:\n{(work / 'server.log').read_text()}")
            time.sleep(0.3)
        yield url, models
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def cached_lesson(tiny: Path, models: Path) -> None:
    """A finished over-optimisation lesson of seed 0 on the tiny models, where the app keeps it."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from app import lesson
    from rmcore.policy.lesson import LessonConfig, run_lesson
    from rmcore.policy.lesson_data import LESSON_SEED

    before = os.environ.get("RMCORE_MODELS_DIR")
    os.environ["RMCORE_MODELS_DIR"] = str(models)
    try:
        config = LessonConfig(seed=LESSON_SEED, policy=str(tiny), reward_model=str(tiny),
                              prompts=["Say hello.", "Name a colour."], samples_per_prompt=4, max_new_tokens=6,
                              epochs=1)
        run_lesson(config, lesson.lesson_dir(LESSON_SEED))
    finally:
        if before is None:
            del os.environ["RMCORE_MODELS_DIR"]
        else:
            os.environ["RMCORE_MODELS_DIR"] = before


def test_curve_drawn_job_started_and_stopped(policy_server):
    from playwright.sync_api import sync_playwright

    url, models = policy_server
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(300_000)  # a loaded 2-core machine: the first page imports torch
        page.goto(url)
        page.get_by_test_id("stSidebarNavLink").filter(has_text="Best-of-n & RLHF").click()
        page.get_by_role("heading", name="Best-of-n & RLHF").first.wait_for()
        page.get_by_label("Prompts to sample").fill("2")
        page.get_by_label("Prompts to sample").press("Enter")
        page.wait_for_timeout(1500)
        page.get_by_role("button", name="Sample and draw the curve").click()
        try:
            wait_for_plots(page, 1)
        except Exception:
            screenshot(page, "policy-0-failed")
            raise
        page.get_by_test_id("stDataFrame").first.wait_for()  # the table comes last: the run is over
        page.wait_for_timeout(2000)
        screenshot(page, "policy-1-best-of-n")

        page.wait_for_timeout(2000)  # let the rerun after the curve settle
        page.get_by_role("tab", name="Fine-tune (RLHF)").last.click()
        rounds = page.get_by_label("Rounds")
        rounds.fill("10")  # long enough to still be running when Stop is pressed
        rounds.press("Enter")
        page.wait_for_timeout(1500)
        page.get_by_role("button", name="Start fine-tuning").click()
        page.get_by_role("button", name="Stop (keeps a checkpoint and the policy so far)").wait_for()
        wait_for_plots(page, 2)  # the held-out curve of the starting policy (step 0)
        screenshot(page, "policy-2-running")
        page.get_by_role("button", name="Stop (keeps a checkpoint and the policy so far)").click()
        page.get_by_text("Stopped: ").first.wait_for()
        screenshot(page, "policy-3-stopped")
        # the cached lesson is drawn below, without a model of the user's own
        page.get_by_text("The pick before and after the turn").wait_for()
        page.get_by_role("heading", name="Over-optimisation lesson").first.scroll_into_view_if_needed()
        page.wait_for_timeout(1500)
        screenshot(page, "policy-4-lesson")
        browser.close()
    saved = [p for p in models.iterdir() if (p / "rmcore_policy.json").is_file()]
    assert saved and (saved[0] / "checkpoint" / "state.json").is_file()
