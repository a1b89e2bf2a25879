"""Bad input and faults: a corpus of malformed files, Ctrl-C, a kill while saving, OOM, wrong resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rmcore.cli import main
from rmcore.data import read_preferences
from rmcore.errors import TrainingError
from rmcore.train import TrainConfig, train

MALFORMED = Path(__file__).parent / "data" / "malformed"
EXPECTED = json.loads((MALFORMED / "EXPECTED.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_corpus(name, capsys):
    exit_code, message = EXPECTED[name]
    path = MALFORMED / name
    code = main(["validate", str(path), "--json", "--no-tokenize"])
    out, err = capsys.readouterr()
    assert code == exit_code, err
    if exit_code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(str(path)), err
        assert message in lines[0]
    else:
        report = json.loads(out)
        reasons = [s["reason"] for s in report["skipped"]] + report["warnings"]
        if message:
            assert any(message in r for r in reasons), reasons
            assert all(s["where"].startswith(str(path)) for s in report["skipped"])
        assert report["comparisons"] > 0


def test_every_skipped_row_is_counted(tmp_path):
    report = read_preferences(MALFORMED / "bad_ranks.jsonl").report
    assert report.rows == 4 and report.prompts == 1 and len(report.skipped) == 3


CTRL_C_SCRIPT = textwrap.dedent("""
    import sys, time
    from rmcore.data import read_preferences
    from rmcore.train import TrainConfig, train

    def slow_steps(event):
        if event["event"] == "step":
            print("STEP", event["step"], flush=True)
            time.sleep(0.5)

    groups = read_preferences(sys.argv[1]).groups
    result = train(TrainConfig(model=sys.argv[2], mode="full", epochs=5, lr=1e-3), groups, sys.argv[3],
                   on_step=slow_steps)
    print("STOPPED" if result.stopped else "FINISHED", result.steps, flush=True)
""")


def test_ctrl_c_saves_a_checkpoint_and_the_model_so_far(tiny_model_dir, demo_path, tmp_path):
    out = tmp_path / "rm"
    env = {**os.environ, "RMCORE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT, str(demo_path), str(tiny_model_dir), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        if line.startswith("STEP 2"):
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "STOPPED" in rest
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert 2 <= state["step"] < 30
    assert json.loads((out / "rmcore.json").read_text())["stopped"] is True


KILL_WHILE_SAVING = textwrap.dedent("""
    import os, signal, sys
    from rmcore.model import RewardModel
    model = RewardModel.load(sys.argv[1], device="cpu")
    torch_save = type(model.tokenizer).save_pretrained
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    type(model.tokenizer).save_pretrained = die
    model.save(sys.argv[2], {"version": 2})
""")


def test_a_process_killed_while_saving_leaves_the_previous_model(tiny_model_dir, tmp_path):
    from rmcore.model import RewardModel

    out = RewardModel.load(tiny_model_dir, device="cpu").save(tmp_path / "rm", {"version": 1})
    before = (out / "model.safetensors").read_bytes()
    proc = subprocess.run([sys.executable, "-c", KILL_WHILE_SAVING, str(tiny_model_dir), str(out)], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((out / "rmcore.json").read_text())["version"] == 1
    assert (out / "model.safetensors").read_bytes() == before
    assert RewardModel.load(out, device="cpu").trained


def test_out_of_memory_names_a_smaller_setting(tiny_model_dir, demo_path, tmp_path, monkeypatch):
    train_module = sys.modules["rmcore.train"]  # `rmcore.train` is also the function's name

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_module, "pack_groups", oom)
    groups = read_preferences(demo_path).groups
    with pytest.raises(TrainingError, match=r"out of memory at batch size 8 .*--batch-size 4 or --max-length 256"):
        train(TrainConfig(model=str(tiny_model_dir), mode="full", max_length=512), groups, tmp_path / "rm")


def test_resume_with_other_data_is_refused(tiny_model_dir, demo_path, tmp_path, private_cache):
    import threading

    groups = read_preferences(demo_path).groups
    config = TrainConfig(model=str(tiny_model_dir), mode="full", epochs=2, lr=1e-3)
    stop = threading.Event()
    stop.set()  # stop after the first step
    train(config, groups, tmp_path / "rm", stop_event=stop)
    assert (tmp_path / "rm" / "checkpoint").is_dir()
    with pytest.raises(TrainingError, match="another model, data or options"):
        train(config, groups[:-3], tmp_path / "rm", resume=True)


def test_cli_train_on_unusable_data_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rmcore", "train", str(MALFORMED / "all_tied.jsonl"), "--out",
                           str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "every ranked response is tied" in proc.stderr
    assert not (tmp_path / "x").exists()  # nothing written for a run that could not start
