"""The app in a real browser: Debian's Chromium driven by Playwright against `streamlit run app/main.py`.

Open the app, upload a file, start a training and watch the curve grow, stop it (the model so far is
kept), probe and see the heatmap, evaluate, and take a screenshot of every page (tests/e2e/screenshots/, or
$RMCORE_SCREENSHOTS) for a person to look at. Runs on a tiny random model: about a minute.
Playwright cannot download its own browser here, so it launches /usr/bin/chromium (`make browser`).
"""

from __future__ import annotations

import os
import shutil
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
    from rmcore.model.tiny import build_tiny_model

    work = tmp_path_factory.mktemp("e2e")
    tiny = build_tiny_model(work / "tiny-llama")
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

    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
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


def go(page, title: str) -> None:
    page.get_by_test_id("stSidebarNavLink").filter(has_text=title).click()
    page.get_by_role("heading", name=title).first.wait_for()


def wait_for_plots(page, count: int) -> None:
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {count}")
    page.wait_for_timeout(500)


def test_upload_train_probe_evaluate_in_a_browser(page, server, tmp_path):
    # 1. Data: the app opens on the Data page; upload a file (the demo set under another name)
    page.goto(server)
    page.get_by_text("Upload ranked preferences").first.wait_for()
    screenshot(page, "01-data-empty")
    upload = tmp_path / "my_rankings.jsonl"
    from rmcore.data import demo_data_path

    upload.write_bytes(demo_data_path().read_bytes())
    page.locator("input[type=file]").set_input_files(str(upload))
    page.get_by_text("Validation report").first.wait_for()
    page.get_by_text("The edited set").first.wait_for()
    assert page.get_by_test_id("stMetricValue").first.inner_text() == "58"
    page.get_by_test_id("stSidebar").get_by_text("my_rankings.jsonl").first.wait_for()
    wait_for_plots(page, 1)
    screenshot(page, "02-data-uploaded")

    # 2. Train: full mode on the tiny model, far longer than the test waits: it watches the curve, then stops
    go(page, "Train")
    page.get_by_text("Estimated time").first.wait_for()
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
    assert page.get_by_role("button", name="Download my_rankings-full.zip").is_visible()
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
