"""Settings in one place (TrainConfig), and a time budget that ends a run on time with a finished model."""

from __future__ import annotations

import ast
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from rmcore.cli.parser import NOT_ON_THE_COMMAND_LINE, build_parser
from rmcore.training.config import DEFAULT_EPOCHS, DEFAULT_LR, TrainConfig, default, parse_duration

ROOT = Path(__file__).resolve().parents[1]


def test_the_command_line_takes_every_default_from_train_config():
    args = build_parser().parse_args(["train", "data.jsonl", "--out", "m"])
    for spec in fields(TrainConfig):
        if spec.name in NOT_ON_THE_COMMAND_LINE:
            continue
        assert getattr(args, spec.name) == spec.default, f"--{spec.name} has a default of its own"
    values = {spec.name: getattr(args, spec.name) for spec in fields(TrainConfig) if hasattr(args, spec.name)}
    assert asdict(TrainConfig(**values)) == asdict(TrainConfig())


def test_the_command_line_help_comes_from_train_config():
    parser = build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    helps = {action.dest: action.help for action in train_parser._actions}
    for spec in fields(TrainConfig):
        if spec.name in NOT_ON_THE_COMMAND_LINE or spec.name == "time_budget_s":
            continue
        assert spec.metadata["help"] in helps[spec.name]


def test_the_app_train_form_writes_no_default_of_its_own():
    """Every number the Train form starts from is read from rmcore.training.config, not written in the page."""
    source = (ROOT / "app" / "views" / "train.py").read_text()
    tree = ast.parse(source)
    widgets = ("number_input", "slider", "radio", "selectbox")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in widgets:
            key = next((k.value.value for k in node.keywords if k.arg == "key"), None)
            value = next((k.value for k in node.keywords if k.arg in ("value", "index")), None)
            if value is None and node.func.attr in ("number_input", "slider") and len(node.args) > 3:
                value = node.args[3]  # (label, min_value, max_value, value, ...)
            if key and key.startswith("train_") and value is not None:
                assert not isinstance(value, ast.Constant), f"{key} starts from the literal {value.value!r}"


def test_lora_alpha_is_the_same_from_every_caller():
    assert TrainConfig(mode="lora", lora_r=8).lora_scaling_alpha() == 16
    assert TrainConfig(mode="lora", lora_r=64).lora_scaling_alpha() == 128
    assert TrainConfig(mode="lora", lora_r=8, lora_alpha=4).lora_scaling_alpha() == 4


def test_mode_defaults():
    for mode in DEFAULT_LR:
        config = TrainConfig(mode=mode)
        assert config.learning_rate() == DEFAULT_LR[mode] and config.epochs == DEFAULT_EPOCHS[mode]
    assert default("eval_fraction") == 0.1


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("90s", 90), ("1h30m", 5400), ("1.5h", 5400),
                                           ("30", 1800), ("2 min", 120)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0", "-5m", "m"])
def test_bad_durations_say_how_to_write_one(text):
    with pytest.raises(ValueError, match="duration|more than 0"):
        parse_duration(text)


def test_no_import_cycle_between_estimate_and_train():
    """In a fresh interpreter: importing the time estimate must not import the trainer."""
    import subprocess

    code = ("import sys, rmcore.training.estimate, rmcore.training.config; "
            "assert 'rmcore.training.train' not in sys.modules, 'the time estimate must not need the trainer'; "
            "assert rmcore.training.estimate.TrainConfig is rmcore.training.config.TrainConfig")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_version_is_read_from_the_package_metadata():
    from importlib.metadata import version

    import rmcore

    assert rmcore.__version__ == version("rmcore")


# ----------------------------------------------------------------------------- the time budget


def test_a_time_budget_ends_on_time_with_a_decayed_schedule_and_a_finished_model(tiny_model_dir, demo_path,
                                                                                  tmp_path, simulated_machine,
                                                                                  private_cache):
    from rmcore.data import read_preferences, split_groups
    from rmcore.model.reward_model import RewardModel
    from rmcore.training.train import train

    clock = simulated_machine(cost=0.0005)  # a step of 4 prompts (~1,500 tokens) takes about 2 s
    groups = read_preferences(demo_path).groups
    train_groups, eval_groups = split_groups(groups, 0.1)
    config = TrainConfig(model=str(tiny_model_dir), mode="full", epochs=50, batch_size=4, lr=1e-3,
                         time_budget_s=60)
    events: list[dict] = []
    result = train(config, train_groups, tmp_path / "rm", eval_groups=eval_groups, on_step=events.append,
                   started_at=clock())
    steps = [e for e in events if e["event"] == "step"]
    max_steps = 50 * -(-len(train_groups) // 4)
    assert not result.stopped and 3 <= result.steps < max_steps
    assert result.total_steps == result.steps
    # each step records the rate it trained at: the last one the smallest of the decay, whose next is 0
    decay = [e["lr"] for e in steps[1:]]
    assert steps[-1]["lr"] == min(decay) > 0
    # before a step was timed, the run planned the plan's steps, not every epoch's (its warm-up, its bar)
    assert steps[0]["total_steps"] == json.loads((tmp_path / "rm" / "rmcore.json").read_text())["plan"]["steps"]
    meta = json.loads((tmp_path / "rm" / "rmcore.json").read_text())
    assert meta["elapsed_s"] <= 60 and meta["time_budget_s"] == 60 and not meta["stopped"]
    evals = [e for e in events if e["event"] == "eval"]
    assert evals[-1]["step"] == result.steps  # evaluated at the end, though it was not an epoch end
    assert RewardModel.load(tmp_path / "rm", device="cpu").trained


def test_without_a_budget_the_epochs_decide(tiny_model_dir, demo_path, tmp_path, private_cache):
    from rmcore.data import read_preferences
    from rmcore.training.train import train

    groups = read_preferences(demo_path).groups[:12]
    result = train(TrainConfig(model=str(tiny_model_dir), mode="head", epochs=3, batch_size=4), groups,
                   tmp_path / "rm")
    assert result.steps == result.total_steps == 9


def test_the_command_line_budget_reaches_the_saved_model(tiny_model_dir, demo_path, tmp_path, private_cache,
                                                         capsys):
    from rmcore.cli import main

    code = main(["train", str(demo_path), "--out", str(tmp_path / "rm"), "--model", str(tiny_model_dir),
                 "--time-budget", "10m", "--limit", "12", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "rm" / "rmcore.json").read_text())["time_budget_s"] == 600
    assert "of a 600 s budget" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", str(demo_path), "--out", str(tmp_path / "x"), "--time-budget", "soon"])
    assert "write it like 30m" in capsys.readouterr().err
