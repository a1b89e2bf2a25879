"""Training on a tiny random model: every mode learns and saves, stop and resume, 2 processes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading

import pytest
import torch

from rmcore.core.errors import TrainingError
from rmcore.data import read_preferences, split_groups
from rmcore.model.reward_model import RewardModel, load_sequence_classifier
from rmcore.model.shared_trunk import read_weights
from rmcore.training.train import TrainConfig, train

STEP_KEYS = {"loss", "accuracy", "margin", "reward_mean", "reward_std", "lr", "tokens_per_s", "progress",
             "step", "total_steps", "eta_s"}


@pytest.fixture(scope="module")
def demo_split(demo_path):
    groups = read_preferences(demo_path).groups
    return split_groups(groups, 0.2, seed=0)


def weights(folder) -> dict[str, torch.Tensor]:
    return read_weights(folder)  # one file, or a head-mode model's shards (rmcore.model.shared_trunk)


@pytest.mark.parametrize(("mode", "lr"), [("head", 5e-2), ("lora", 5e-3), ("full", 2e-3)])
def test_every_mode_trains_changes_its_parameters_and_saves(mode, lr, tiny_model_dir, demo_split, tmp_path,
                                                           private_cache):
    train_groups, eval_groups = demo_split
    events: list[dict] = []
    config = TrainConfig(model=str(tiny_model_dir), mode=mode, epochs=3, lr=lr, batch_size=8, max_length=256)
    result = train(config, train_groups, tmp_path / "rm", eval_groups=eval_groups, on_step=events.append)
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == result.total_steps == 3 * 6
    assert STEP_KEYS <= set(steps[0])
    assert [e["step"] for e in events if e["event"] == "eval"] == [0, 6, 12, 18]
    assert steps[-1]["progress"] == 1.0 and events[-1]["event"] == "done"
    # what changed: the head always; the trunk only in lora (merged) and full modes
    before, _, _ = load_sequence_classifier(str(tiny_model_dir), seed=0)
    start = {k: v for k, v in before.state_dict().items()}
    after = weights(tmp_path / "rm")
    changed = {k for k in after if not torch.equal(after[k], start[k])}
    trunk = {k for k in after if k != "score.weight"}
    assert "score.weight" in changed
    if mode == "head":
        assert not changed & trunk
    else:
        linear = {k for k in trunk if k.endswith("proj.weight")}
        assert linear <= changed  # every linear layer moved (LoRA on "all-linear" is merged in)
    # training lowered the loss on the data it saw
    first = sum(s["loss"] for s in steps[:6]) / 6
    last = sum(s["loss"] for s in steps[-6:]) / 6
    assert last < first
    meta = json.loads((tmp_path / "rm" / "rmcore.json").read_text())
    assert meta["mode"] == mode and meta["steps"] == 18 and not meta["stopped"]
    assert len((tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()) == 18 + 4
    # the saved folder scores through rmcore with the trained head
    model = RewardModel.load(tmp_path / "rm", device="cpu")
    assert model.trained and model.metadata["base_model"] == str(tiny_model_dir)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_trainable_layers_trains_only_the_top_blocks(mode, tiny_model_dir, demo_split, tmp_path, private_cache):
    train_groups, eval_groups = demo_split
    config = TrainConfig(model=str(tiny_model_dir), mode=mode, epochs=1, lr=5e-3, batch_size=8, max_length=256,
                         trainable_layers=1)
    train(config, train_groups, tmp_path / "rm", eval_groups=eval_groups)
    before, _, _ = load_sequence_classifier(str(tiny_model_dir), seed=0)
    start = before.state_dict()
    after = weights(tmp_path / "rm")
    changed = {k for k in after if not torch.equal(after[k], start[k])}
    top = before.config.num_hidden_layers - 1
    linear = {k for k in after if k.endswith("proj.weight")}
    assert "score.weight" in changed
    assert {k for k in linear if f"layers.{top}." in k} <= changed  # the top block moved
    assert not {k for k in changed if ".layers." in k and f"layers.{top}." not in k}  # nothing below it
    assert "model.embed_tokens.weight" not in changed


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_frozen_lower_blocks_run_once_and_train_the_same_model(mode, tiny_model_dir, demo_split, tmp_path,
                                                                private_cache, monkeypatch):
    """With trainable_layers, the hidden state entering the first trained block is kept from the first pass
    over a group: later epochs and evaluations run only the top blocks, and train the same model."""
    from rmcore.training import held_out, lower_blocks
    from rmcore.training import train as train_module

    train_groups, eval_groups = demo_split
    config = TrainConfig(model=str(tiny_model_dir), mode=mode, epochs=3, lr=5e-3, batch_size=8, max_length=256,
                         trainable_layers=1, eval_every=2)
    starts = []
    real_forward = lower_blocks.LowerBlocks.forward

    def counted(self, module, batch, groups):
        starts.append(self._gather(batch, groups) is not None)
        return real_forward(self, module, batch, groups)

    monkeypatch.setattr(lower_blocks.LowerBlocks, "forward", counted)
    cached = train(config, train_groups, tmp_path / "cached", eval_groups=eval_groups)
    assert any(starts) and not all(starts)  # the first passes keep, the later ones start from what was kept
    monkeypatch.setattr(train_module.LowerBlocks, "for_run", classmethod(lambda cls, config, packed: None))
    # packed as the kept run packs (a row per group): rows of several groups round differently, and 18 AdamW
    # steps at 5e-3 grow that to 1e-4 (test_packed_attention checks those rows against a row each)
    monkeypatch.setattr(train_module, "ROW_TOKENS", None)
    monkeypatch.setattr(held_out, "ROW_TOKENS", None)
    whole = train(config, train_groups, tmp_path / "whole", eval_groups=eval_groups)
    kept, plain = weights(tmp_path / "cached"), weights(tmp_path / "whole")
    assert all(torch.allclose(kept[k], plain[k], atol=1e-5) for k in plain)
    assert [e["eval_accuracy"] for e in cached.history if e["event"] == "eval"] == pytest.approx(
        [e["eval_accuracy"] for e in whole.history if e["event"] == "eval"])


def test_frozen_lower_blocks_run_once_under_a_time_budget_too(tiny_model_dir, demo_split, tmp_path, private_cache,
                                                              monkeypatch):
    """A budgeted full-mode run on the top blocks keeps its own hidden states (--mode auto's rule of when to
    keep them is about auto's second stage only)."""
    from rmcore.training import lower_blocks

    starts = []
    real_forward = lower_blocks.LowerBlocks.forward

    def counted(self, module, batch, groups):
        starts.append(self._gather(batch, groups) is not None)
        return real_forward(self, module, batch, groups)

    monkeypatch.setattr(lower_blocks.LowerBlocks, "forward", counted)
    train_groups, eval_groups = demo_split
    train(TrainConfig(model=str(tiny_model_dir), mode="full", epochs=3, trainable_layers=1, time_budget_s=60),
          train_groups, tmp_path / "rm", eval_groups=eval_groups)
    assert any(starts), "later passes started from the kept hidden states"


def test_more_trainable_layers_than_the_model_has_is_refused(tiny_model_dir, demo_split, tmp_path):
    config = TrainConfig(model=str(tiny_model_dir), mode="full", epochs=1, trainable_layers=99)
    with pytest.raises(TrainingError, match="more than the model's"):
        train(config, demo_split[0], tmp_path / "rm")
    assert not (tmp_path / "rm").exists()


def test_head_mode_reuses_cached_trunk_features(tiny_model_dir, demo_split, tmp_path, private_cache):
    train_groups, eval_groups = demo_split
    config = TrainConfig(model=str(tiny_model_dir), mode="head", epochs=1)
    phases: list[str] = []
    shares: list[float] = []
    etas: list[float | None] = []

    def record(e):
        if e["event"] == "phase":
            phases.append(e["phase"])
            if e["phase"].startswith("computing trunk features"):
                shares.append(e["progress"])
                etas.append(e["eta_s"])

    train(config, train_groups, tmp_path / "a", eval_groups=eval_groups, on_step=record)
    assert any(p.startswith("computing trunk features") for p in phases)
    # progress is the share of tokens done (shortest prompts first), so it lags the share of prompts
    assert shares == sorted(shares) and shares[-1] == pytest.approx(1.0) and len(shares) > 2
    prompts_share = 8 / (len(train_groups) + len(eval_groups))
    assert shares[0] < prompts_share
    # the time left comes as a number (the CLI and the app word it), until the last batch
    assert etas[0] is not None and etas[0] > 0 and etas[-1] is None
    assert len(list((private_cache / "features").rglob("*.safetensors"))) == 1
    phases.clear()
    train(config, train_groups, tmp_path / "b", eval_groups=eval_groups, on_step=record)
    assert "trunk features found in the cache" in phases
    assert not any(p.startswith("computing trunk features") for p in phases)
    assert torch.equal(weights(tmp_path / "a")["score.weight"], weights(tmp_path / "b")["score.weight"])


def test_edited_data_computes_trunk_features_only_for_the_changed_prompt(tiny_model_dir, demo_split, tmp_path,
                                                                       private_cache):
    from rmcore.training.estimate import StepRates, estimate_training_time

    train_groups, eval_groups = demo_split
    config = TrainConfig(model=str(tiny_model_dir), mode="head", epochs=1)
    rates = StepRates(str(tiny_model_dir), "head", "cpu", 0.0, 1e-3, 0.0, 1000)
    fresh = estimate_training_time(config, train_groups, eval_groups, rates=rates)
    train(config, train_groups, tmp_path / "a", eval_groups=eval_groups)
    phases: list[str] = []

    def record(e):
        if e["event"] == "phase":
            phases.append(e["phase"])

    # a labeler adds a best answer to one prompt: only that prompt's features are new
    first = train_groups[0]
    edited = [dataclasses.replace(first, responses=[*first.responses, "A new best answer."],
                                  ranks=[None if r is None else r + 1 for r in first.ranks] + [1]),
              *train_groups[1:]]
    partial = estimate_training_time(config, edited, eval_groups, rates=rates)
    assert 0 < partial.parts["features"] < fresh.parts["features"] / 5 and not partial.cached_features
    train(config, edited, tmp_path / "b", eval_groups=eval_groups, on_step=record)
    total = len(edited) + len(eval_groups)
    assert f"trunk features of {total - 1} of {total} prompts found in the cache" in phases
    assert any(p.startswith("computing trunk features (1/1 prompts") for p in phases)
    # the mixed features train the same head as features computed from scratch
    uncached = dataclasses.replace(config, cache_features=False)
    train(uncached, edited, tmp_path / "c", eval_groups=eval_groups)
    torch.testing.assert_close(weights(tmp_path / "b")["score.weight"], weights(tmp_path / "c")["score.weight"])
    # another held-out share of the original prompts: everything comes from the cache
    phases.clear()
    regrouped_train, regrouped_eval = train_groups[5:] + eval_groups, train_groups[:5]
    assert estimate_training_time(config, regrouped_train, regrouped_eval, rates=rates).cached_features
    train(config, regrouped_train, tmp_path / "d", eval_groups=regrouped_eval, on_step=record)
    assert not any(p.startswith("computing trunk features") for p in phases)
    # shards whose prompts a newer shard holds are removed: the original set and the edited set remain
    assert len(list((private_cache / "features").rglob("*.safetensors"))) == 2


def test_evaluating_a_head_model_reads_the_trunk_features_its_training_cached(tiny_model_dir, demo_split, tmp_path,
                                                                             private_cache):
    from rmcore.analysis.evaluate import evaluate

    train_groups, eval_groups = demo_split
    train(TrainConfig(model=str(tiny_model_dir), mode="head", epochs=2, lr=5e-2), train_groups, tmp_path / "rm",
          eval_groups=eval_groups)
    model = RewardModel.load(tmp_path / "rm", device="cpu")
    shares: list[float] = []
    cached = evaluate(model, eval_groups, on_progress=shares.append)
    assert shares == [1.0]  # every held-out prompt came from the cache: no batch was computed
    fresh = RewardModel.load(tmp_path / "rm", device="cpu")
    fresh.metadata["feature_cache"] = None
    computed = evaluate(fresh, eval_groups)
    assert cached.summary["accuracy"] == computed.summary["accuracy"]
    torch.testing.assert_close([r["reward"] for r in cached.responses], [r["reward"] for r in computed.responses],
                               atol=1e-5, rtol=1e-5)
    # a trunk changed after training no longer matches its cached features: they are not used
    with torch.no_grad():
        next(p for n, p in model.model.named_parameters() if "layers.0." in n).add_(0.5)
    shares.clear()
    changed = evaluate(model, eval_groups, on_progress=shares.append)
    assert shares[0] < 1.0
    assert max(abs(a["reward"] - b["reward"]) for a, b in zip(changed.responses, computed.responses)) > 1e-3


def test_stop_keeps_a_checkpoint_and_resume_reaches_the_uninterrupted_model(tiny_model_dir, demo_split, tmp_path,
                                                                           private_cache):
    train_groups, _ = demo_split
    config = TrainConfig(model=str(tiny_model_dir), mode="full", epochs=2, lr=2e-3, batch_size=8, seed=3)
    whole = train(config, train_groups, tmp_path / "whole")
    stop = threading.Event()

    def stop_at_step_4(e):
        if e["event"] == "step" and e["step"] == 4:
            stop.set()

    part = train(config, train_groups, tmp_path / "part", on_step=stop_at_step_4, stop_event=stop)
    assert part.stopped and part.steps == 4
    assert (tmp_path / "part" / "checkpoint" / "state.json").is_file()
    assert json.loads((tmp_path / "part" / "rmcore.json").read_text())["stopped"] is True
    resumed = train(config, train_groups, tmp_path / "part", resume=True)
    assert not resumed.stopped and resumed.steps == whole.steps
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "part")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "part" / "checkpoint").exists()  # finished: the checkpoint is no longer needed


def test_non_finite_loss_stops_with_a_message_and_keeps_the_checkpoint(tiny_model_dir, demo_split, tmp_path,
                                                                      private_cache):
    train_groups, _ = demo_split
    config = TrainConfig(model=str(tiny_model_dir), mode="full", epochs=2, lr=1e-3, checkpoint_every=2)
    poisoned = [g for g in train_groups]

    calls = {"n": 0}
    original = torch.nn.functional.logsigmoid

    def nan_after_three_steps(x):
        calls["n"] += 1
        out = original(x)
        return out * float("nan") if calls["n"] > 3 else out

    import rmcore.training.loss

    rmcore.training.loss.F.logsigmoid = nan_after_three_steps
    try:
        with pytest.raises(TrainingError, match="loss became nan at step 4"):
            train(config, poisoned, tmp_path / "rm")
    finally:
        rmcore.training.loss.F.logsigmoid = original
    state = json.loads((tmp_path / "rm" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2


def test_data_without_comparisons_is_refused(tiny_model_dir, tmp_path):
    from rmcore.data import RankedGroup

    tied = [RankedGroup([{"role": "user", "content": "q"}], ["a", "b"], [1, 1])]
    with pytest.raises(TrainingError, match="no comparison"):
        train(TrainConfig(model=str(tiny_model_dir)), tied, tmp_path / "rm")


def test_two_process_accelerate_launch(tiny_model_dir, demo_path, tmp_path):
    """The same CLI under `accelerate launch` with 2 CPU processes: half the steps each, one saved model."""
    env = {**os.environ, "RMCORE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    import socket

    with socket.socket() as s:  # a free port, so a leftover process on torchrun's default cannot collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(port),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rmcore", "train",
           str(demo_path), "--out", str(tmp_path / "ddp"), "--model", str(tiny_model_dir), "--mode", "full",
           "--batch-size", "4", "--eval-fraction", "0.1", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "ddp" / "rmcore.json").read_text())
    batches = -(-meta["data"]["train_prompts"] // 4)
    assert meta["total_steps"] == -(-batches // 2)  # each process takes every other batch
    assert proc.stderr.count("saved ") == 1  # only the main process reports


def test_stop_while_computing_features_ends_at_once_without_saving(tiny_model_dir, demo_split, tmp_path,
                                                                   private_cache):
    stop = threading.Event()
    stop.set()
    result = train(TrainConfig(model=str(tiny_model_dir), mode="head", batch_size=2), demo_split[0],
                   tmp_path / "rm", stop_event=stop)
    assert result.stopped and result.steps == 0
    assert not (tmp_path / "rm").exists()
    assert not list(private_cache.glob("features/*"))  # no half-computed cache entry either
