"""The app in a real browser: Debian's Chromium driven by Playwright against `streamlit run app/main.py`.

Open the app, upload a file, start a training and watch the curve grow, stop it (the model so far is
kept), probe and see the heatmap, evaluate, and take a screenshot of every page (tests/e2e/screenshots/, or
$RMCORE_SCREENSHOTS) for a person to look at. Then type and choose on every page, visit another, come
back and read the values in the browser (what AppTest cannot see), and watch a budgeted run's plan and
bars. Runs on a tiny random model: a few minutes. tests/e2e/screenshots/before/ holds the screenshots of
the app before issue 25 was fixed and after/ those after (with Export's head-only download, taken by
hand), both committed for comparison; the test leaves those folders alone.
Playwright cannot download its own browser here, so it launches /usr/bin/chromium (`make browser`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("RMCORE_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("RMCORE_SCREENSHOTS") or Path(__file__).parent / "screenshots")
BROWSER_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`streamlit run app/main.py` on a free port, pointed at a tiny model and a private models folder."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (make browser installs Debian's)")
    from rmcore.model.tiny import build_tiny_model, build_tiny_reward_model

    work = tmp_path_factory.mktemp("e2e")
    tiny = build_tiny_model(work / "tiny-llama")
    build_tiny_reward_model(work / "models" / "fixture-rm", seed=1)  # Best-of-n needs a trained reward model
    port = free_port()
    env = dict(
        os.environ,
        RMCORE_APP_BASE_MODEL=str(tiny),
        RMCORE_APP_GENERATOR=str(tiny),
        RMCORE_MODELS_DIR=str(work / "models"),
        RMCORE_CACHE=str(work / "cache"),
        RMCORE_DEVICE="cpu",
        HF_HUB_OFFLINE="1",
    )
    log = open(work / "server.log", "w")
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app/main.py",
        "--server.headless",
        "true",
        "--server.port",
        str(port),
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    try:
        deadline = time.time() + 60
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
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):  # this run's own: before/ stays for comparison
        old.unlink()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        tab.set_default_timeout(60_000)
        yield tab
        browser.close()


def screenshot(page, name: str) -> Path:
    """The whole page: Streamlit scrolls inside its main block, so grow the viewport to its height first."""
    height = page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": max(900, min(int(height) + 40, 8000))})
    page.wait_for_timeout(700)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1400, "height": 900})
    return path


def idle(page) -> None:
    """Wait until the app has finished its run: no running indicator, no element left over from the last run."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=stStatusWidgetRunningIcon], "
        "[data-testid=stStatusWidgetRunningManIcon]') && !document.querySelector('[data-stale=true]')",
        timeout=120_000,
    )


def go(page, title: str) -> None:
    page.get_by_test_id("stSidebarNavLink").filter(has_text=title).click()
    page.get_by_role("heading", name=title).first.wait_for()
    idle(page)


def choose(page, label: str, option: str) -> None:
    """Pick `option` in the selectbox `label` (a combobox: type to filter, Enter takes the first match)."""
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    box.fill(option)
    page.wait_for_timeout(400)
    page.keyboard.press("Enter")
    idle(page)


def type_into(page, label: str, text: str) -> None:
    """Type into a text area and leave it (Streamlit takes a text area's value when it loses the focus)."""
    box = page.get_by_role("textbox", name=label, exact=True)
    box.fill(text)
    box.press("Tab")
    idle(page)


def number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    idle(page)


def wait_for_plots(page, count: int) -> None:
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {count}")
    page.wait_for_timeout(500)


SKIPPED_ROWS = (
    '{"prompt": "A question with only one answer", "responses": ["The only answer."], "ranks": [1]}\n'
    '{"prompt": "A question nobody ranked", "responses": ["One answer.", "Another answer."], "ranks": [null, null]}\n'
)


def test_upload_train_probe_evaluate_in_a_browser(page, server, tmp_path):
    # 1. Data: the app opens on the Data page; upload a file (the demo set under another name)
    page.goto(server)
    page.get_by_text("Upload ranked preferences").first.wait_for()
    screenshot(page, "01-data-empty")
    upload = tmp_path / "my_rankings.jsonl"
    from rmcore.data import demo_data_path

    # the demo set under another name, and two rows it must skip (the report lists them, with the reasons)
    upload.write_bytes(demo_data_path().read_bytes() + SKIPPED_ROWS.encode())
    page.locator("input[type=file]").set_input_files(str(upload))
    page.get_by_text("Validation report").first.wait_for()
    page.get_by_text("The edited set").first.wait_for()
    assert page.get_by_test_id("stMetricValue").first.inner_text() == "58"
    page.get_by_text("2 skipped rows").first.wait_for()
    page.get_by_test_id("stSidebar").get_by_text("my_rankings.jsonl").first.wait_for()
    wait_for_plots(page, 1)
    screenshot(page, "02-data-uploaded")

    # 2. Train: full mode on the tiny model, far longer than the test waits: it watches the curve, then stops
    go(page, "Train")
    page.get_by_text("Planned time").first.wait_for()  # the default way: a time budget, and its plan
    assert page.get_by_text("Trains in head mode on").first.is_visible()
    assert not page.get_by_text("Estimated time").count(), "a budgeted run shows its plan, not an estimate"
    screenshot(page, "03a-train-plan")
    page.get_by_text("full", exact=True).click()
    page.get_by_text("epochs", exact=True).click()  # a fixed number of epochs, not the default time budget
    page.wait_for_timeout(600)
    for label, value in (("Epochs", "50"), ("Batch size", "2")):
        box = page.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Enter")
        page.wait_for_timeout(600)
    page.get_by_text("Estimated time").first.wait_for()
    screenshot(page, "03-train-settings")
    page.get_by_role("button", name="Start training").click()
    # record the curve's length in the page every 200 ms (the page redraws it about every second)
    page.evaluate(
        """() => { window.curveLengths = [];
                   window.curveTimer = setInterval(() => {
                       const gd = document.querySelector('.js-plotly-plot');
                       const n = gd && gd.data && gd.data[0] && gd.data[0].x ? gd.data[0].x.length : 0;
                       if (n) window.curveLengths.push(n);
                   }, 200); }"""
    )
    page.wait_for_function("new Set(window.curveLengths).size >= 3", timeout=240_000)
    lengths = page.evaluate("window.curveLengths")
    assert max(lengths) > min(lengths) and lengths == sorted(lengths), (
        "the live curve grows while training runs"
    )
    screenshot(page, "04-train-running")
    # Stop: the run ends at the next step, keeping a checkpoint and the model so far
    page.get_by_role("button", name="Stop (keeps a checkpoint)").click()
    page.get_by_text("Stopped: my_rankings-full").first.wait_for(timeout=120_000)
    page.get_by_text("model and checkpoint saved").first.wait_for()
    page.evaluate("clearInterval(window.curveTimer)")
    wait_for_plots(page, 1)
    screenshot(page, "05-train-stopped")

    # 3. Probe: the new model scores the example candidates; the heatmap of P[i][j] appears
    go(page, "Probe")
    page.get_by_role("button", name="Score the candidates").click()  # nothing is scored before the user asks
    page.get_by_text("Reward token by token").first.wait_for()
    wait_for_plots(page, 3)
    types = page.evaluate(
        "() => [...document.querySelectorAll('.js-plotly-plot')].map(gd => gd.data[0].type)"
    )
    assert "heatmap" in types
    heatmap = page.locator(".js-plotly-plot").nth(types.index("heatmap"))
    heatmap.scroll_into_view_if_needed()
    box = heatmap.locator(".nsewdrag").first.bounding_box()
    for step in range(1, 6):  # glide in, as a hand would: plotly hovers on mousemove
        page.mouse.move(box["x"] + box["width"] * 0.1 * step, box["y"] + box["height"] * 0.03 * step)
    page.wait_for_selector(".hoverlayer .hovertext", timeout=10_000)
    assert "preferred over" in page.locator(".hoverlayer .hovertext").first.text_content()
    picker = page.get_by_test_id("stSelectbox").first
    assert "my_rankings-full" in picker.inner_html(), picker.inner_html()
    page.mouse.move(5, 5)
    screenshot(page, "06-probe")

    # 4. Evaluate on the held-out prompts saved with the model
    go(page, "Evaluate")
    page.get_by_role("button", name="Evaluate on").click()
    page.get_by_text("Worst-ranked pairs").first.wait_for(timeout=120_000)
    wait_for_plots(page, 4)
    screenshot(page, "07-evaluate")

    # 5. Learn and Export
    go(page, "Learn")
    wait_for_plots(page, 1)
    screenshot(page, "08-learn")
    go(page, "Export")
    page.get_by_text("Use it with transformers").first.wait_for()
    download = page.get_by_role("button", name="Download my_rankings-full.zip (")
    assert download.is_visible()
    assert download.inner_text().rstrip().endswith(("kB)", "MB)")), "the button says the download's size"
    screenshot(page, "09-export")

    for name in (
        "01-data-empty",
        "02-data-uploaded",
        "04-train-running",
        "06-probe",
        "07-evaluate",
        "09-export",
    ):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000


def test_values_survive_a_visit_to_another_page_in_a_browser(page, server, tmp_path):
    """Issue 25, item 1: type and choose on every page, visit Learn, come back, and read what the browser shows."""
    page.goto(server)
    page.get_by_text("Upload ranked preferences").first.wait_for()
    idle(page)
    page.get_by_role("button", name="Load the demo set").click()
    page.get_by_text("Validation report").first.wait_for()
    idle(page)
    choose(page, "Instruction", "#5:")  # the Data page's editor
    data_pick = page.get_by_role("combobox", name="Instruction", exact=True).input_value()
    assert data_pick.startswith("#5:")

    go(page, "Train")
    page.get_by_text("lora", exact=True).click()
    idle(page)
    choose(page, "Time budget", "1 min")
    number(page, "Batch size", 4)
    number(page, "Max length", 256)
    choose(page, "Learning rate", "0.0001")
    page.get_by_role("textbox", name="Name of the new model").fill("kept-name")
    page.get_by_role("textbox", name="Name of the new model").press("Enter")
    idle(page)

    go(page, "Probe")
    choose(page, "Reward model", "untrained")
    type_into(page, "Instruction", "My own instruction, typed before visiting Learn")
    type_into(page, "Candidate #2", "My own second candidate")
    to_score = tmp_path / "to_score.jsonl"
    to_score.write_text('{"prompt": "Say hi.", "responses": ["Hi!", "Hello there."]}\n')
    page.locator("input[type=file]").set_input_files(str(to_score))  # Score a file: an upload is kept too
    page.get_by_role("button", name="Score 1 instruction (2 answers)").wait_for()
    idle(page)

    go(page, "Best-of-n & RLHF")
    choose(page, "Reward model (the proxy that picks and is optimised)", "fixture-rm")
    page.get_by_text("type them", exact=True).click()
    idle(page)
    type_into(page, "Instructions, one per line", "Say hello.\nName a colour.")
    choose(page, "Samples per prompt (N)", "16")

    go(page, "Evaluate")
    choose(page, "Reward model", "fixture-rm")
    page.get_by_text("the data set loaded on the Data page").click()
    idle(page)
    number(page, "Instructions to use at most", 17)

    go(page, "Learn")  # away from all of them

    go(page, "Probe")
    assert "untrained" in page.get_by_role("combobox", name="Reward model", exact=True).input_value()
    assert page.get_by_role("textbox", name="Instruction", exact=True).input_value() == (
        "My own instruction, typed before visiting Learn")
    assert page.get_by_role("textbox", name="Candidate #2", exact=True).input_value() == "My own second candidate"
    assert page.get_by_role("textbox", name="Candidate #1", exact=True).input_value().startswith("Lower the eggs")
    page.get_by_text("uploaded earlier in this session").first.wait_for()  # the file to score, kept
    assert page.get_by_text("to_score.jsonl").first.is_visible()
    screenshot(page, "10-probe-after-learn")

    go(page, "Train")
    assert page.get_by_role("radio", name="lora").is_checked()
    assert page.get_by_role("combobox", name="Time budget", exact=True).input_value() == "1 min"
    assert page.get_by_label("Batch size", exact=True).input_value() == "4"
    assert page.get_by_label("Max length", exact=True).input_value() == "256"
    assert page.get_by_role("combobox", name="Learning rate", exact=True).input_value() == "0.0001"
    assert page.get_by_role("textbox", name="Name of the new model").input_value() == "kept-name"
    page.get_by_text("Planned time").first.wait_for()
    screenshot(page, "11-train-after-learn")

    go(page, "Best-of-n & RLHF")
    assert page.get_by_role("combobox", name="Reward model (the proxy that picks and is optimised)",
                            exact=True).input_value().startswith("fixture-rm")
    assert page.get_by_role("radio", name="type them").is_checked()
    assert page.get_by_role("textbox", name="Instructions, one per line").input_value() == "Say hello.\nName a colour."
    assert page.get_by_role("combobox", name="Samples per prompt (N)", exact=True).input_value() == "16"

    go(page, "Evaluate")
    assert page.get_by_role("combobox", name="Reward model", exact=True).input_value().startswith("fixture-rm")
    assert page.get_by_role("radio", name="the data set loaded on the Data page").is_checked()
    assert page.get_by_label("Instructions to use at most", exact=True).input_value() == "17"

    go(page, "Data")
    assert page.get_by_role("combobox", name="Instruction", exact=True).input_value() == data_pick

    # the budgeted run those Train settings start: its plan, then its bars against the budget while it runs
    go(page, "Train")
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("of the 1 min budget").first.wait_for(timeout=120_000)
    page.get_by_text("Plan: lora mode").first.wait_for(timeout=120_000)
    page.wait_for_timeout(1500)
    screenshot(page, "12-train-budget-running")
    page.get_by_role("button", name="Stop (keeps a checkpoint)").click()
    page.get_by_text("Stopped: kept-name").first.wait_for(timeout=120_000)
