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
from rmcore.errors import ModelError, TrainingError
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


def test_output_folders_where_saving_would_lose_something_are_refused(tiny_model_dir, demo_path, tmp_path,
                                                                      private_cache):
    import threading

    groups = read_preferences(demo_path).groups[:12]
    config = TrainConfig(model=str(tiny_model_dir), mode="head", epochs=2)
    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(ModelError, match="not empty and holds no rmcore model"):
        train(config, groups, mine)
    assert (mine / "notes.txt").read_text() == "precious"
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        train(config, groups, a_file)
    assert a_file.read_text() == "x"
    with pytest.raises(ModelError, match="no checkpoint to resume"):
        train(config, groups, tmp_path / "new", resume=True)
    # a stopped run keeps its checkpoint until --resume continues it
    stop = threading.Event()
    stop.set()
    full = TrainConfig(model=str(tiny_model_dir), mode="full", epochs=2, lr=1e-3)
    train(full, groups, tmp_path / "stopped", stop_event=stop)
    with pytest.raises(ModelError, match="add --resume"):
        train(full, groups, tmp_path / "stopped")
    assert (tmp_path / "stopped" / "checkpoint" / "state.json").is_file()
    # a finished model is replaced, and says so; nothing is left beside it
    phases = []
    train(config, groups, tmp_path / "done")
    train(config, groups, tmp_path / "done", on_step=lambda e: phases.append(e.get("phase")))
    assert any(p and "it is replaced" in p for p in phases)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rmcore", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_cli_refuses_outputs_and_options_that_would_lose_work_or_mean_nothing(tiny_model_dir, demo_path, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(demo_path.read_bytes())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    cases = [
        (["train", data, "--out", mine, "--model", tiny_model_dir], "holds no rmcore model"),
        (["eval", data, "--model", tiny_model_dir, "--pairs-csv", data], "is the input file"),
        (["eval", data, "--model", tiny_model_dir, "--pairs-csv", tmp_path / "no" / "p.csv"], "no such folder"),
        (["score", "--model", "models/not-there", "--prompt", "q", "--response", "a"], "no such model folder"),
        (["score", "--model", "not-a-model", "--prompt", "q", "--response", "a"], "never from a hub"),
        (["score", "--model", tiny_model_dir, "--prompt", "q", "--response", "", "--response", "b"], "[0] is empty"),
        (["score", "--model", tiny_model_dir, "--prompt", "q", "--response", "a", "--max-length", "3"], "at least 16"),
        (["train", data, "--out", tmp_path / "x", "--center-coefficient", "-1"], "must be a number >= 0"),
        (["train", data, "--out", tmp_path / "x", "--eval-every", "-1"], "must be 0 (each epoch)"),
    ]
    for args, message in cases:
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert "huggingface.co" not in proc.stderr and "internet" not in proc.stderr, proc.stderr
    assert data.read_bytes() == demo_path.read_bytes()
    assert (mine / "notes.txt").read_text() == "precious" and not (tmp_path / "x").exists()


def test_cli_output_cut_short_by_a_closed_pipe_is_not_an_error(tmp_path):
    proc = subprocess.run(f"{sys.executable} -m rmcore validate {MALFORMED / 'bom.jsonl'} --no-tokenize | head -1",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
