"""What a newcomer meets first (issue 19): the README's quick start and commands, `make app PORT=...`,
`make test` without root, example outputs out of `git status`, an app whose first page needs neither
torch nor transformers, progress lines from long commands in a log file, a quiet first `rmcore embedded`.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
RMCORE = [sys.executable, "-m", "rmcore"]


# ----------------------------------------------------------------------------- set-up and README


def make_dry_run(*args: str, env: dict | None = None) -> str:
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    ran = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def test_make_app_takes_a_port_and_defaults_to_8501():
    assert "streamlit run app/main.py --server.port 8600" in make_dry_run("app", "PORT=8600")
    assert "streamlit run app/main.py --server.port 8501" in make_dry_run("app")


def test_make_browser_without_root_says_what_to_do_and_does_not_fail(tmp_path):
    """`make test` installs Chromium with apt, which needs root: without it, a hint and the tests go on."""
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    bin_dir = tmp_path / "bin"  # a PATH without chromium, and an `id` that says "not root"
    bin_dir.mkdir()
    for tool in ("make", "sh", "env"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    (bin_dir / "id").chmod(0o755)
    (bin_dir / "apt-get").write_text("#!/bin/sh\necho apt-get was called; exit 1\n")
    (bin_dir / "apt-get").chmod(0o755)
    ran = subprocess.run(["make", "browser"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PATH": str(bin_dir)})
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "apt needs root" in ran.stdout and "sudo apt-get install -y chromium" in ran.stdout
    assert "apt-get was called" not in ran.stdout


def test_example_outputs_stay_out_of_git_status():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("scored.jsonl", "models/demo-head/model.safetensors"):
        ran = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, timeout=30)
        assert ran.returncode == 0, f"{path} would show in git status"


def test_readme_starts_with_a_quick_start_before_the_reference():
    headings = re.findall(r"^## (.+)$", README, flags=re.MULTILINE)
    assert headings[0] == "Quick start", headings[:3]
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line for line in re.findall(r"```bash\n(.*?)```", quick, flags=re.DOTALL)[0].splitlines()
                if line.strip() and not line.startswith(" ")]
    assert len(commands) == 3, commands
    assert re.search(r"\d+ (s|min)", quick), "the quick start says how long it takes"


def test_readme_cli_examples_put_rmcore_on_the_path_first():
    """A bare `rmcore` in a bash block runs only after `source .venv/bin/activate` (or via .venv/bin)."""
    activated = False
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL):
        for line in block.splitlines():
            if "source .venv/bin/activate" in line:
                activated = True
            if re.match(r"\s*rmcore ", line):
                assert activated, f"`{line.strip()}` runs before the README activates .venv"


def test_readme_session_commands_say_how_long_they_take():
    session = README.split("A session on the real data", 1)[1].split("```", 3)
    block, after = session[1], session[2]
    assert "--limit 200" in block
    assert re.search(r"\d+ (s|min)", after), "expected times next to the real-data commands"


# ----------------------------------------------------------------------------- the app's first paint

APP_FIRST_PAGE = """
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=120).run()
assert not at.exception, at.exception
at.switch_page("views/learn.py").run()
assert not at.exception, at.exception
heavy = sorted(name for name in ("torch", "transformers") if name in sys.modules)
print("heavy:", ",".join(heavy))
"""


def test_first_page_of_the_app_imports_neither_torch_nor_transformers(tiny_model_dir, tmp_path):
    """The Data page (the first one drawn) and Learn need neither: importing them took seconds before
    the navigation appeared. A fresh process, so nothing else in the test session imported them."""
    env = dict(os.environ, RMCORE_APP_BASE_MODEL=str(tiny_model_dir), RMCORE_MODELS_DIR=str(tmp_path / "models"),
               RMCORE_CACHE=str(tmp_path / "cache"))
    ran = subprocess.run([sys.executable, "-c", APP_FIRST_PAGE, str(ROOT / "app" / "main.py")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr[-3000:]
    assert "heavy: \n" in ran.stdout, ran.stdout


def test_rmcore_data_does_not_import_torch_and_the_package_names_still_resolve():
    code = textwrap.dedent("""
        import sys
        import rmcore.data
        assert "torch" not in sys.modules
        import rmcore.analysis.evaluate, rmcore.training.train  # modules of rmcore.evaluate and rmcore.train
        import rmcore
        from rmcore import RewardModel, TrainConfig, evaluate, train
        assert callable(train) and callable(evaluate) and rmcore.train is train and rmcore.evaluate is evaluate
        assert RewardModel.__name__ == "RewardModel" and TrainConfig.__name__ == "TrainConfig"
        print("ok")
    """)
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert ran.stdout.strip() == "ok", ran.stderr[-2000:]


# ----------------------------------------------------------------------------- the command line


def test_line_progress_prints_lines_off_a_terminal():
    from rmcore.core.progress import LineProgress, progress

    stream = io.StringIO()  # not a terminal
    bar = progress(10, "prompts", "score", stream=stream)
    assert isinstance(bar, LineProgress)
    bar.close()
    closing = stream.getvalue().splitlines()
    assert len(closing) == 1 and closing[0].startswith("[rmcore] score: 0/10 prompts") and "in all" in closing[0]
    stream = io.StringIO()
    with LineProgress(10, "prompts", "score", stream, every_s=0.05) as bar:
        bar.update(4)
        import time

        time.sleep(0.3)
    lines = stream.getvalue().splitlines()
    assert len(lines) > 2 and all(line.startswith("[rmcore] score: 4/10 prompts (40%)") for line in lines), lines
    assert "left" in lines[-2] and "in all" in lines[-1]  # every few seconds, then one closing line
    with LineProgress(100, "% of tokens", "eval", io.StringIO(), 60) as percent:
        assert percent.line(2.0) == "[rmcore] eval: 0% of tokens, 2 s so far"
        percent.update(25)
        assert percent.line(10.0) == "[rmcore] eval: 25% of tokens, 10 s so far, about 30 s left"


def test_a_slow_wait_says_what_it_is_doing_and_a_quick_one_says_nothing():
    import time

    from rmcore.core.progress import SlowNotice

    stream = io.StringIO()
    with SlowNotice("loading the model x", after_s=0.05, stream=stream):
        time.sleep(0.3)
    said = stream.getvalue().splitlines()
    assert said[0] == "[rmcore] loading the model x…" and said[1].startswith("[rmcore] loading the model x: done in")
    quick = io.StringIO()
    with SlowNotice("loading the model x", after_s=5, stream=quick):
        pass
    assert quick.getvalue() == ""  # one-line error messages stay one line


def test_the_first_command_says_it_is_importing_torch_when_that_takes_a_while():
    """A fresh process spends seconds importing torch before `eval` can say anything else."""
    code = "import sys; from rmcore.cli import main; sys.exit(main(['eval', 'missing.jsonl']))"
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RMCORE_SLOW_SECONDS": "0"})
    lines = ran.stderr.splitlines()
    assert ran.returncode == 2 and lines[0] == "[rmcore] starting eval: importing torch and transformers…", lines
    assert lines[1].startswith("[rmcore] starting eval: importing torch and transformers: done in"), lines


def test_file_scoring_reports_progress_within_a_chunk(tiny_model_dir, demo_path):
    """20 prompts are one chunk of 8 x batch size: progress came only at its end, so a long chunk said 0/20."""
    from rmcore.analysis.scoring import scored_records
    from rmcore.data import read_preferences
    from rmcore.model.reward_model import RewardModel

    groups = read_preferences(demo_path).groups[:20]
    seen: list[int] = []
    records = list(scored_records(RewardModel.load(tiny_model_dir, device="cpu"), groups, 4, seen.append))
    assert len(records) == 20 and seen[-1] == 20
    assert len(seen) >= 5 and seen == sorted(seen) and 0 < seen[-2] < 20  # counted before the chunk ends


@pytest.mark.parametrize("command", ["score", "eval"])
def test_long_commands_print_progress_lines_to_a_pipe(command, tiny_model_dir, demo_path, tmp_path):
    """stderr to a pipe (a log file, CI): progress lines instead of silence (every 5 s by default)."""
    args = (["score", "--model", str(tiny_model_dir), "--data", str(demo_path), "--out", str(tmp_path / "s.jsonl")]
            if command == "score" else ["eval", str(demo_path), "--model", str(tiny_model_dir)])
    env = dict(os.environ, RMCORE_PROGRESS_SECONDS="0.2", RMCORE_CACHE=str(tmp_path / "cache"))
    ran = subprocess.run(RMCORE + args + ["--limit", "20"], capture_output=True, text=True, env=env, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    lines = [line for line in ran.stderr.splitlines() if line.startswith(f"[rmcore] {command}: ")]
    assert lines, ran.stderr
    assert "\r" not in ran.stderr  # no bar redrawn with carriage returns in a log file


@pytest.mark.slow
def test_first_rmcore_embedded_prints_no_progress_bar(tmp_path):
    """The first use converts the GGUF file (transformers draws a de-quantisation bar unless told not to)."""
    env = dict(os.environ, RMCORE_CACHE=str(tmp_path / "cache"))
    ran = subprocess.run(RMCORE + ["embedded"], capture_output=True, text=True, env=env, timeout=900)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert Path(ran.stdout.strip(), "model.safetensors").is_file()
    # one line says what the 20 s are for (a wait over 2 s is never silent), and no bar is drawn
    assert ran.stderr.startswith("[rmcore] converting the embedded") and ran.stderr.count("\n") == 1, ran.stderr
    assert "\r" not in ran.stderr and "%|" not in ran.stderr


# ----------------------------------------------------------------------------- the models folder

PROMPT = "How do I boil an egg?"
ANSWERS = ["Simmer it for 9 minutes, then cool it in cold water.", "idk, google it"]


@pytest.fixture()
def head_models(tiny_model_dir, demo_path, tmp_path, private_cache):
    """Two head-mode models trained (differently) from the same base, in a models folder."""
    from rmcore.data import read_preferences
    from rmcore.training.train import TrainConfig, train

    groups = read_preferences(demo_path).groups[:12]
    models = tmp_path / "models"
    for name, lr in (("first", 5e-2), ("second", 1e-2)):
        train(TrainConfig(model=str(tiny_model_dir), mode="head", epochs=1, lr=lr), groups, models / name)
    return models


def plain_transformers_rewards(folder: Path, texts: list[str]) -> tuple[list[float], list[float]]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        direct = [model(**tokenizer(text, return_tensors="pt")).logits.item() for text in texts]
    pipe = pipeline("text-classification", model=str(folder), function_to_apply="none", device="cpu")
    return direct, [out["score"] for out in pipe(texts)]


def test_head_mode_models_share_one_trunk_shard_and_load_with_plain_transformers(head_models, private_cache):
    from rmcore.model.reward_model import RewardModel
    from rmcore.model.shared_trunk import HEAD_SHARD, INDEX_FILE, TRUNK_SHARD, folder_size

    first, second = head_models / "first", head_models / "second"
    for folder in (first, second):
        assert {TRUNK_SHARD, HEAD_SHARD, INDEX_FILE} <= {p.name for p in folder.iterdir()}
        assert not (folder / "model.safetensors").exists()
    trunk = (first / TRUNK_SHARD).stat()
    assert trunk.st_ino == (second / TRUNK_SHARD).stat().st_ino  # one file on disk
    cached = list((private_cache / "trunks").glob("*.safetensors"))
    assert len(cached) == 1 and cached[0].stat().st_ino == trunk.st_ino and trunk.st_nlink == 3
    size = folder_size(first)
    assert size.shared >= trunk.st_size and size.own < size.shared
    for folder in (first, second):
        rm = RewardModel.load(folder, device="cpu")
        expected = rm.rewards(PROMPT, ANSWERS)
        direct, piped = plain_transformers_rewards(folder, [rm.render(PROMPT, a) for a in ANSWERS])
        assert direct == pytest.approx(expected, abs=1e-5) and piped == pytest.approx(expected, abs=1e-5)
    assert RewardModel.load(first).rewards(PROMPT, ANSWERS) != pytest.approx(
        RewardModel.load(second).rewards(PROMPT, ANSWERS), abs=1e-6)  # each keeps its own head


def test_without_a_hard_link_the_trunk_is_copied_and_the_user_told(tiny_model_dir, demo_path, tmp_path,
                                                                    private_cache, monkeypatch):
    import errno

    from rmcore.data import read_preferences
    from rmcore.model import shared_trunk
    from rmcore.model.reward_model import RewardModel
    from rmcore.training.train import TrainConfig, train

    def no_link(source, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(shared_trunk.os, "link", no_link)
    phases: list[str] = []
    out = tmp_path / "copied"
    train(TrainConfig(model=str(tiny_model_dir), mode="head", epochs=1), read_preferences(demo_path).groups[:6],
          out, on_step=lambda e: phases.append(e.get("phase", "")))
    assert any("copied" in p and "another filesystem" in p for p in phases), phases
    assert (out / shared_trunk.TRUNK_SHARD).stat().st_nlink == 1
    rm = RewardModel.load(out, device="cpu")
    direct, _ = plain_transformers_rewards(out, [rm.render(PROMPT, a) for a in ANSWERS])
    assert direct == pytest.approx(rm.rewards(PROMPT, ANSWERS), abs=1e-5)


def test_export_zip_holds_every_weight_and_loads_elsewhere(head_models, tmp_path):
    import zipfile

    sys.path.insert(0, str(ROOT))
    from app.files import zip_folder
    from rmcore.model.reward_model import RewardModel
    from rmcore.model.shared_trunk import TRUNK_SHARD

    folder = head_models / "first"
    with zipfile.ZipFile(io.BytesIO(zip_folder(folder))) as archive:
        assert archive.getinfo(f"first/{TRUNK_SHARD}").file_size == (folder / TRUNK_SHARD).stat().st_size
        archive.extractall(tmp_path / "elsewhere")
    copy = tmp_path / "elsewhere" / "first"
    assert (copy / TRUNK_SHARD).stat().st_nlink == 1
    rm = RewardModel.load(folder, device="cpu")
    direct, _ = plain_transformers_rewards(copy, [rm.render(PROMPT, a) for a in ANSWERS])
    assert direct == pytest.approx(rm.rewards(PROMPT, ANSWERS), abs=1e-5)


def test_delete_model_removes_only_rmcore_models_inside_the_models_folder(head_models, private_cache, monkeypatch):
    sys.path.insert(0, str(ROOT))
    from app import settings
    from rmcore.model.reward_model import RewardModel
    from rmcore.model.shared_trunk import TRUNK_SHARD, folder_size

    monkeypatch.setenv("RMCORE_MODELS_DIR", str(head_models))
    (head_models / "first" / "held_out.jsonl").write_text("")  # the app writes it beside the models it trains
    own = folder_size(head_models / "first").own
    assert settings.delete_model("first") == own
    assert not (head_models / "first").exists() and not list(head_models.glob(".first*"))
    assert (head_models / "second" / TRUNK_SHARD).stat().st_nlink == 2  # the cache and the other model
    RewardModel.load(head_models / "second", device="cpu")  # still whole
    (head_models / "second" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="rmcore did not write"):
        settings.delete_model("second")
    (head_models / "someone-elses").mkdir()
    (head_models / "someone-elses" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not saved by rmcore"):
        settings.delete_model("someone-elses")
    for name in ("../second", "/tmp", ""):
        with pytest.raises(ValueError):
            settings.delete_model(name)
    assert (head_models / "second" / "notes.txt").is_file() and (head_models / "someone-elses").is_dir()


def test_export_page_lists_models_with_their_disk_use_and_deletes_after_confirming(head_models, tiny_model_dir,
                                                                                  tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT))
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("RMCORE_MODELS_DIR", str(head_models))
    monkeypatch.setenv("RMCORE_APP_BASE_MODEL", str(tiny_model_dir))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120).run()
    at = at.switch_page("views/export.py").run()
    assert not at.exception, [e.message for e in at.exception]
    table = at.dataframe[-1].value  # the models table comes last
    assert sorted(table["model"]) == ["first", "second"]
    assert all(value != "–" for value in table["shared (trunk)"])
    at.selectbox(key="models_delete_pick").set_value("first")
    at.button(key="models_delete").click().run()
    assert any("Delete **first** for good?" in w.value for w in at.warning)
    assert (head_models / "first").is_dir()  # nothing deleted before the user confirms
    at.button(key="models_delete_no").click().run()
    assert (head_models / "first").is_dir() and not at.warning
    at.button(key="models_delete").click().run()
    at.button(key="models_delete_yes").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert not (head_models / "first").exists() and (head_models / "second").is_dir()
    assert any(s.value.startswith("Deleted first: ") for s in at.success), [s.value for s in at.success]
