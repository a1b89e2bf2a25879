"""Cold first paint of the app: how long a fresh server takes to draw its navigation in a browser.

Each run starts a new `streamlit run app/main.py` (a new Python process: nothing imported yet, as
after `make app`), waits until the server answers its health check, then opens the page in headless
Chromium and times, from the moment the browser is told to open the page:
  - nav:  the sidebar's page links are drawn (what the user first sees of the app)
  - page: the default page's title is drawn.
It prints each run and the medians. With `--ref COMMIT` the app as of that commit (read with
`git archive`, nothing in the working tree changes) is timed too, taking turns with the working
tree in the same run, and the ratio of medians is printed.

    .venv/bin/python bench/first_paint.py                 # 5 runs of the working tree
    .venv/bin/python bench/first_paint.py --ref HEAD      # before (HEAD) and after (working tree)

Needs Chromium at /usr/bin/chromium (`apt-get install -y chromium`, as root) and Playwright (in .venv).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("RMCORE_CHROMIUM", "/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]
NAV = "[data-testid=stSidebarNavLink]"
TITLE = "[data-testid=stMain] h1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(app_dir: Path, work: Path) -> tuple[subprocess.Popen, str]:
    """A fresh server for `app_dir`, with a private models folder; returns once /_stcore/health says ok."""
    port = free_port()
    env = dict(os.environ, RMCORE_MODELS_DIR=str(work / "models"), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "streamlit", "run", "app/main.py",
               "--server.headless", "true", "--server.port", str(port)]
    log = open(work / f"server-{port}.log", "w")
    process = subprocess.Popen(command, cwd=app_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return process, url
        except OSError:
            pass
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise RuntimeError(f"streamlit did not start:\n{(work / f'server-{port}.log').read_text()}")
        time.sleep(0.2)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def time_one(browser, app_dir: Path, work: Path) -> dict[str, float]:
    process, url = start_server(app_dir, work)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(120_000)
        start = time.perf_counter()
        page.goto(url)
        page.locator(NAV).first.wait_for(state="visible")
        nav = time.perf_counter() - start
        page.locator(TITLE).first.wait_for(state="visible")
        title = time.perf_counter() - start
        page.close()
        return {"nav_s": nav, "page_s": title}
    finally:
        stop_server(process)


def export_commit(ref: str, into: Path) -> Path:
    """The project as of `ref`, unpacked into a temporary folder (reads git; changes nothing)."""
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh servers per version (median reported)")
    parser.add_argument("--ref", help="also time the app as of this commit (e.g. HEAD), taking turns")
    parser.add_argument("--json", type=Path, help="write every run's times here")
    args = parser.parse_args()
    if not Path(CHROMIUM).is_file():
        sys.exit(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (as root), or set RMCORE_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="rmcore-first-paint-") as tmp:
        work = Path(tmp)
        versions = {"working tree": ROOT}
        if args.ref:
            (work / "ref").mkdir()
            versions = {args.ref: export_commit(args.ref, work / "ref"), **versions}
        times: dict[str, list[dict[str, float]]] = {name: [] for name in versions}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            for run in range(args.runs):
                for name, app_dir in versions.items():
                    result = time_one(browser, app_dir, work)
                    times[name].append(result)
                    print(f"run {run + 1} {name:>12}: navigation {result['nav_s']:.2f} s, "
                          f"page title {result['page_s']:.2f} s", flush=True)
            browser.close()
    medians = {name: {key: statistics.median(r[key] for r in runs) for key in ("nav_s", "page_s")}
               for name, runs in times.items()}
    for name, median in medians.items():
        print(f"median {name:>12}: navigation {median['nav_s']:.2f} s, page title {median['page_s']:.2f} s "
              f"({args.runs} runs)")
    if args.ref:
        before, after = medians[args.ref], medians["working tree"]
        print(f"navigation: {before['nav_s'] / after['nav_s']:.1f}x faster than {args.ref}")
    if args.json:
        args.json.write_text(json.dumps({"runs": times, "medians": medians, "cpus": os.cpu_count(),
                                         "load": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
