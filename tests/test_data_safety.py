"""Nothing of the user's is lost: model folders, output files, killed runs, Ctrl-C, leftovers of a killed save."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rmcore.cli import main
from rmcore.core.errors import ModelError
from rmcore.data import read_preferences
from rmcore.model.shared_trunk import read_weights
from rmcore.training.train import TrainConfig, train


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return read_weights(folder)  # one file, or a head-mode model's shards (rmcore.model.shared_trunk)


@pytest.fixture()
def groups(demo_path):
    return read_preferences(demo_path).groups[:16]


def _train_cli(data: Path, out: Path, model: Path, *extra: str) -> int:
    return main(["train", str(data), "--out", str(out), "--model", str(model), "--limit", "10", "--quiet", *extra])


# ----------------------------------------------------------------------------- model folders


def test_retraining_into_a_model_folder_keeps_the_users_files(tiny_model_dir, demo_path, tmp_path, private_cache):
    out = tmp_path / "m"
    assert _train_cli(demo_path, out, tiny_model_dir) == 0
    (out / "n.txt").write_text("notes")
    data_copy = out / "d.jsonl"
    data_copy.write_bytes(demo_path.read_bytes())
    (out / "runs").mkdir()
    (out / "runs" / "log.txt").write_text("mine")
    assert _train_cli(data_copy, out, tiny_model_dir, "--seed", "1") == 0
    assert (out / "n.txt").read_text() == "notes"
    assert data_copy.read_bytes() == demo_path.read_bytes()
    assert (out / "runs" / "log.txt").read_text() == "mine"
    meta = json.loads((out / "rmcore.json").read_text())
    assert meta["config"]["seed"] == 1  # the model itself was replaced
    assert "n.txt" not in meta["files"] and "model.safetensors.index.json" in meta["files"]  # head mode: shards
    assert not list(tmp_path.glob(".m.*"))  # no hidden leftovers


def test_a_users_file_with_a_name_rmcore_writes_is_refused_before_training(tiny_model_dir, demo_path, tmp_path,
                                                                         capsys, private_cache):
    out = tmp_path / "m"
    assert _train_cli(demo_path, out, tiny_model_dir) == 0
    (out / "README.md").write_text("my own notes about this model")
    meta = json.loads((out / "rmcore.json").read_text())
    meta["files"] = [f for f in meta["files"] if f != "README.md"]
    (out / "rmcore.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert _train_cli(demo_path, out, tiny_model_dir) == 2
    err = capsys.readouterr().err
    assert "README.md: not written by rmcore" in err and "loading" not in err
    assert (out / "README.md").read_text() == "my own notes about this model"


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(where, tiny_model_dir, demo_path,
                                                                             tmp_path, capsys):
    if where == "under_a_file":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "m"
    else:
        out = Path("/proc/rmcore-test-model")
    code = _train_cli(demo_path, out, tiny_model_dir)
    err = capsys.readouterr().err
    assert code == 2 and str(out) in err, err
    assert "[rmcore] loading" not in err and "Traceback" not in err


def test_leftovers_of_a_killed_save_are_cleaned_by_the_next_save_which_says_so(tiny_model_dir, groups, tmp_path,
                                                                              private_cache):
    out = tmp_path / "m"
    config = TrainConfig(model=str(tiny_model_dir), mode="head")
    train(config, groups, out)
    # a save killed between its renames: a half-written temporary folder and the previous folder,
    # which still holds a file of the user's
    tmp_left = tmp_path / ".m.tmp-abc123"
    tmp_left.mkdir()
    (tmp_left / "model.safetensors").write_bytes(b"\0" * 4096)
    old_left = tmp_path / ".m.old-def456"
    old_left.mkdir()
    (old_left / "rmcore.json").write_text(json.dumps({"files": ["rmcore.json", "config.json"]}))
    (old_left / "config.json").write_text("{}")
    (old_left / "notes.txt").write_text("keep me")
    phases: list[str] = []
    train(config, groups, out, on_step=lambda e: phases.append(e.get("phase", "")))
    assert not tmp_left.exists() and not old_left.exists()
    assert (out / "notes.txt").read_text() == "keep me"
    said = " | ".join(phases)
    assert "removed .m.tmp-abc123" in said and "interrupted save" in said


def test_a_folder_missing_after_a_killed_save_is_put_back(tiny_model_dir, groups, tmp_path, private_cache):
    out = tmp_path / "m"
    config = TrainConfig(model=str(tiny_model_dir), mode="head")
    train(config, groups, out)
    (out / "mine.txt").write_text("x")
    os.rename(out, tmp_path / ".m.old-0a1b2c")  # killed after the first rename of a save
    train(config, groups, out)
    assert (out / "mine.txt").read_text() == "x" and not (tmp_path / ".m.old-0a1b2c").exists()


# ----------------------------------------------------------------------------- killed and interrupted runs


def _stop_at(step: int):
    import threading

    stop = threading.Event()

    def on_step(event):
        if event["event"] == "step" and event["step"] == step:
            stop.set()

    return stop, on_step


def test_a_run_killed_with_only_its_checkpoint_left_resumes_to_the_uninterrupted_model(
        tiny_model_dir, demo_path, groups, tmp_path, private_cache, capsys):
    config = TrainConfig(model=str(tiny_model_dir), mode="full", epochs=2, lr=2e-3, seed=2)
    whole = train(config, groups, tmp_path / "whole")
    out = tmp_path / "killed"
    stop, on_step = _stop_at(3)
    train(config, groups, out, stop_event=stop, on_step=on_step)
    # what kill -9, out-of-memory or a second Ctrl-C before the model was saved leave: the checkpoint only
    for entry in out.iterdir():
        if entry.name != "checkpoint":
            entry.unlink()
    with pytest.raises(ModelError, match="add --resume"):
        train(config, groups, out)
    resumed = train(config, groups, out, resume=True)  # the advice leads to a finished model
    assert not resumed.stopped and resumed.steps == whole.steps
    a, b = weights(tmp_path / "whole"), weights(out)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert not (out / "checkpoint").exists()


def test_a_checkpoint_swap_killed_half_way_is_put_back(tiny_model_dir, groups, tmp_path, private_cache):
    config = TrainConfig(model=str(tiny_model_dir), mode="head", epochs=3, checkpoint_every=1)
    out = tmp_path / "m"
    stop, on_step = _stop_at(2)
    train(config, groups, out, stop_event=stop, on_step=on_step)
    for entry in out.iterdir():
        if entry.name != "checkpoint":
            entry.unlink()
    os.rename(out / "checkpoint", out / ".checkpoint.old")  # killed between the two renames
    result = train(config, groups, out, resume=True)
    assert not result.stopped and result.steps == result.total_steps


def test_ctrl_c_in_the_middle_of_a_step_resumes_to_the_uninterrupted_model(tiny_model_dir, groups, tmp_path,
                                                                          private_cache, monkeypatch):
    train_module = sys.modules["rmcore.training.train"]
    config = TrainConfig(model=str(tiny_model_dir), mode="full", epochs=2, lr=2e-3, seed=4)
    whole = train(config, groups, tmp_path / "whole")
    calls = {"n": 0}
    schedule_call = train_module._LinearSchedule.__call__

    def interrupt_inside_step_three(self, step):
        # scheduler.step() runs after optimizer.step() and before the step is counted: the worst moment
        calls["n"] += 1
        if calls["n"] == 4:  # the first call is at construction, then one per step
            os.kill(os.getpid(), signal.SIGINT)
        return schedule_call(self, step)

    monkeypatch.setattr(train_module._LinearSchedule, "__call__", interrupt_inside_step_three)
    # a shell's background job inherits SIGINT ignored, and train() leaves an ignored SIGINT alone
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        part = train(config, groups, tmp_path / "part")
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.undo()
    assert part.stopped and part.steps == 3
    resumed = train(config, groups, tmp_path / "part", resume=True)
    assert resumed.steps == whole.steps
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "part")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- output files


@pytest.fixture()
def trained(tiny_model_dir, demo_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "rm"
    assert _train_cli(demo_path, out, tiny_model_dir, "--eval-fraction", "0") == 0
    return out


def _score(model: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["score", "--model", str(model), "--data", str(data), "--out", str(out), "--limit", "3", *extra])


def _eval(model: Path, data: Path, csv: Path, *extra: str) -> int:
    return main(["eval", str(data), "--model", str(model), "--limit", "3", "--pairs-csv", str(csv), *extra])


@pytest.mark.parametrize("command", [_score, _eval])
def test_an_existing_output_file_is_refused_unless_overwrite(command, trained, demo_path, tmp_path, capsys):
    target = tmp_path / "results.out"
    target.write_text("precious")
    assert command(trained, demo_path, target) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert target.read_text() == "precious"
    assert command(trained, demo_path, target, "--overwrite") == 0
    assert target.read_text() != "precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("command", [_score, _eval])
def test_nothing_is_ever_written_into_the_model_folder_being_read(command, trained, demo_path, capsys):
    before = weights(trained)
    for name in ("model.safetensors", "new.out"):
        assert command(trained, demo_path, trained / name, "--overwrite") == 2
        assert "inside the model folder" in capsys.readouterr().err
    assert not (trained / "new.out").exists()
    after = weights(trained)
    assert all(torch.equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------- outputs that are inputs, or another kind


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _policy_folder(root: Path) -> Path:
    """A folder as `rmcore rlhf` saves it: a causal LM with rmcore_policy.json listing its files."""
    from rmcore.model.tiny import build_tiny_model

    folder = build_tiny_model(root / "policy", seed=3)
    files = sorted(p.name for p in folder.iterdir()) + ["rmcore_policy.json"]
    (folder / "rmcore_policy.json").write_text(json.dumps({"method": "rs", "files": files}))
    return folder


def _one_line_exit_2(code: int, capsys, says: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0] and "Traceback" not in err[0], err


def test_rlhf_never_writes_its_output_over_a_model_it_reads(trained, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a prime.\nSay hello.\nBoil an egg?\n")
    policy = _policy_folder(tmp_path)
    before = {folder: _snapshot(folder) for folder in (trained, policy)}
    base = ["rlhf", str(prompts), "--reward-model", str(trained), "--policy", str(policy), "--quiet"]
    for out, says in [(trained, "is the input folder"), (policy, "is the input folder"),
                      (trained / "policy", "inside the model folder"), (prompts, "is the input file")]:
        _one_line_exit_2(main([*base, "--out", str(out)]), capsys, says)
    _one_line_exit_2(main([*base, "--gold", str(trained), "--out", str(trained)]), capsys, "is the input folder")
    assert {folder: _snapshot(folder) for folder in (trained, policy)} == before
    assert not (trained / "policy").exists()


def test_train_never_replaces_a_policy_or_the_model_it_starts_from(trained, demo_path, tmp_path, capsys):
    policy = _policy_folder(tmp_path)
    before = _snapshot(policy)
    _one_line_exit_2(_train_cli(demo_path, policy, trained), capsys, "holds an rmcore policy")
    assert _snapshot(policy) == before
    before = _snapshot(trained)
    _one_line_exit_2(_train_cli(demo_path, trained, trained), capsys, "is the input folder")
    assert _snapshot(trained) == before


def test_a_reward_model_folder_is_not_a_policy_to_replace(trained, tmp_path):
    from rmcore.core.folders import check_output_folder

    with pytest.raises(ModelError, match="holds an rmcore reward model"):
        check_output_folder(trained, False, metadata_file="rmcore_policy.json", what="policy")


def test_bon_never_writes_its_plot_into_a_model_folder_or_over_its_samples(trained, demo_path, tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"prompt": "q", "responses": ["a", "bb", "ccc"]}) + "\n")
    before = _snapshot(trained)
    for plot, says in [(trained / "config.json", "inside the model folder"),
                       (trained / "plot.html", "inside the model folder"), (samples, "is the input file")]:
        code = main(["bon", str(samples), "--model", str(trained), "--plot", str(plot), "--overwrite"])
        _one_line_exit_2(code, capsys, says)
    assert _snapshot(trained) == before and not (trained / "plot.html").exists()
    gold = trained.parent / "gold"
    gold.mkdir()
    code = main(["bon", str(samples), "--model", str(trained), "--gold", str(gold), "--plot", str(gold / "p.html")])
    _one_line_exit_2(code, capsys, "inside the model folder")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_refused_models_and_outputs_are_left_as_they_were(trained, tmp_path, capsys):
    """A trained model whose tokenizer does not match its embeddings is refused, never resized or saved
    again; a named pipe given as an output is never opened, written or replaced."""
    import shutil
    import stat

    from rmcore.model.reward_model import RewardModel

    grown = tmp_path / "grown"
    shutil.copytree(trained, grown)
    tokenizer = json.loads((grown / "tokenizer.json").read_text())
    first = max(tokenizer["model"]["vocab"].values()) + 1 + len(tokenizer["added_tokens"])
    tokenizer["added_tokens"] += [{"id": first + i, "content": f"<x{i}>", "special": False, "single_word": False,
                                   "lstrip": False, "rstrip": False, "normalized": False} for i in range(1000)]
    (grown / "tokenizer.json").write_text(json.dumps(tokenizer))
    before = _snapshot(grown)
    with pytest.raises(ModelError, match="does not belong to these weights, and rmcore never changes a trained"):
        RewardModel.load(grown)
    assert _snapshot(grown) == before
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"prompt": "q", "responses": ["a", "bb"]}) + "\n")
    pipe = tmp_path / "plot.html"
    os.mkfifo(pipe)
    code = main(["bon", str(samples), "--model", str(trained), "--plot", str(pipe), "--overwrite"])
    _one_line_exit_2(code, capsys, "is not a regular file; rmcore replaces only files")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n")
    code = main(["sample", str(prompts), "--out", str(pipe), "--model", str(trained)])
    _one_line_exit_2(code, capsys, "is not a regular file (a named pipe, device or socket); give a samples file")
    assert stat.S_ISFIFO(pipe.stat().st_mode)


# ----------------------------------------------------------------------------- several processes


SEEN_SCRIPT = textwrap.dedent("""
    import json, sys
    from rmcore.data import read_preferences
    from rmcore.training.train import TrainConfig, train

    groups = read_preferences(sys.argv[1]).groups[:int(sys.argv[4])]
    result = train(TrainConfig(model=sys.argv[2], mode="head", epochs=2, batch_size=4), groups, sys.argv[3])
    import torch.distributed as dist
    rank = dist.get_rank() if dist.is_initialized() else 0
    with open(f"{sys.argv[3]}.seen-{rank}.json", "w") as f:
        json.dump({"seen": result.groups_seen, "steps": result.steps}, f)
""")


@pytest.mark.slow
def test_two_processes_see_each_batch_exactly_once_per_epoch(tiny_model_dir, demo_path, tmp_path):
    """5 batches on 2 processes: without care, one process took batch 0 again at each epoch's end."""
    script = tmp_path / "seen.py"
    script.write_text(SEEN_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RMCORE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    prompts = 18  # batches of 4: 4, 4, 4, 4, 2 -> 5 batches per epoch, 3 steps on 2 processes
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(port), "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", str(script), str(demo_path), str(tiny_model_dir), str(tmp_path / "rm"),
           str(prompts)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rm.seen-{rank}.json").read_text())["seen"] for rank in (0, 1)]
    assert len(seen[0]) + len(seen[1]) == 2 * prompts  # each prompt once per epoch, two epochs
    from collections import Counter

    counts = Counter(seen[0] + seen[1])
    assert set(counts) == set(range(prompts)) and set(counts.values()) == {2}
