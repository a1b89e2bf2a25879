"""--mode auto: head mode first, then the top blocks from the head's solution, kept only if better held out."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

import rmcore.training.train as train_module
from rmcore.data import read_preferences, split_groups
from rmcore.model.reward_model import PackedRewardModel
from rmcore.model.tiny import build_tiny_model
from rmcore.training.auto import top_blocks_seconds, top_blocks_won
from rmcore.training.lower_blocks import LowerBlocks
from rmcore.training.train import TrainConfig, train


@pytest.fixture()
def demo_split(demo_path):
    return split_groups(read_preferences(demo_path).groups, 0.2, seed=0)


@pytest.fixture(scope="module")
def six_block_model(tmp_path_factory):
    """A tiny Llama with 6 blocks, so the top 2 leave 4 frozen below (the kept hidden states are used)."""
    return build_tiny_model(tmp_path_factory.mktemp("six") / "tiny-6", layers=6)


def weights(folder) -> dict:
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors


def metadata(folder) -> dict:
    return json.loads((folder / "rmcore.json").read_text())


def force(monkeypatch, won: bool) -> None:
    monkeypatch.setattr(train_module, "top_blocks_won", lambda head, top, stopped: (won, "forced by the test"))


def run(model, split, out, events=None, **options):
    train_groups, eval_groups = split
    config = TrainConfig(model=str(model), **options)
    on_step = (events if events is not None else []).append
    return train(config, train_groups, out, eval_groups=eval_groups, on_step=on_step)


def test_auto_is_the_default_and_without_a_budget_it_is_head_mode(tiny_model_dir, demo_split, tmp_path,
                                                                  private_cache):
    assert TrainConfig().mode == "auto" and TrainConfig().epochs == TrainConfig(mode="head").epochs
    run(tiny_model_dir, demo_split, tmp_path / "rm", epochs=2)
    meta = metadata(tmp_path / "rm")
    assert meta["mode"] == "head" and meta["auto"] is None and meta["config"]["mode"] == "head"


def test_a_kept_head_is_exactly_the_model_head_mode_trains(six_block_model, demo_split, tmp_path, private_cache,
                                                          monkeypatch):
    force(monkeypatch, won=False)
    events: list[dict] = []
    run(six_block_model, demo_split, tmp_path / "auto", events, mode="auto", trainable_layers=2, time_budget_s=120,
        precision="float32")
    run(six_block_model, demo_split, tmp_path / "head", mode="head", time_budget_s=120, precision="float32")
    meta = metadata(tmp_path / "auto")
    assert meta["auto"]["kept"] == "head" and meta["mode"] == "head" and meta["feature_cache"]
    assert meta["auto"]["top_blocks_steps"] > 0, "the top blocks did train before the head was chosen"
    auto, head = weights(tmp_path / "auto"), weights(tmp_path / "head")
    assert auto.keys() == head.keys()
    assert all((auto[k] == head[k]).all() for k in head), "the head's weights are put back exactly"
    assert meta["metrics"]["eval"] == meta["auto"]["head_eval"]
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == sorted(steps) and len(set(steps)) == len(steps), "the top blocks' steps follow the head's"


def test_kept_top_blocks_change_only_the_top_and_start_from_the_kept_hidden_states(
        six_block_model, demo_split, tmp_path, private_cache, monkeypatch):
    force(monkeypatch, won=True)
    passes: list[tuple[bool, bool, bool]] = []  # (features only, from kept hidden states, with gradients)
    original = PackedRewardModel.forward

    def spy(self, batch, features_only=False, structured=True, start=None):
        import torch

        passes.append((features_only, start is not None, torch.is_grad_enabled()))
        return original(self, batch, features_only, structured, start)

    monkeypatch.setattr(PackedRewardModel, "forward", spy)
    events: list[dict] = []
    run(six_block_model, demo_split, tmp_path / "auto", events, mode="auto", trainable_layers=2, time_budget_s=120)
    meta = metadata(tmp_path / "auto")
    assert meta["auto"]["kept"] == "top blocks" and meta["mode"] == "full"
    assert meta["config"]["trainable_layers"] == 2 and meta["feature_cache"] is None
    assert any("then the top 2 blocks from the head's solution" in e.get("phase", "") for e in events)
    trained, base = weights(tmp_path / "auto"), weights(six_block_model)
    lower = [k for k in base if ".layers.0." in k or ".layers.3." in k or "embed_tokens" in k]
    top = [k for k in base if ".layers.5." in k]
    assert lower and all((trained[k] == base[k]).all() for k in lower), "the frozen blocks are the base model's"
    assert any((trained[k] != base[k]).any() for k in top), "the top blocks trained"
    training = [p for p in passes if not p[0] and p[2]]
    assert training and all(from_kept for _, from_kept, _ in training), \
        "every training pass of the top blocks starts from the hidden states kept in the features pass"


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_auto_runs_both_stages_in_bfloat16_where_the_chip_makes_it_fast(fast_bf16, monkeypatch):
    import rmcore.model.device as device

    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: fast_bf16)
    head = TrainConfig(mode="auto").head_first("cpu")
    assert head.mode == "head" and head.precision == ("bfloat16" if fast_bf16 else "float32")
    assert head.mixed_precision("cpu") == ("bf16" if fast_bf16 else "no")
    assert TrainConfig(mode="auto", precision="float32").head_first("cpu").precision == "float32"
    assert TrainConfig(mode="head").mixed_precision("cpu") == "no", "head mode alone computes features as scoring"


def test_no_time_for_a_pass_of_the_top_blocks_keeps_the_head_and_no_hidden_states(
        six_block_model, demo_split, tmp_path, simulated_machine, private_cache, monkeypatch):
    train_groups, eval_groups = demo_split
    kept: list[int] = []
    keeping = LowerBlocks.keeping

    def spy(self, groups):
        kept.append(len(groups))
        return keeping(self, groups)

    monkeypatch.setattr(LowerBlocks, "keeping", spy)
    from rmcore.data.encoding import encode_groups
    from rmcore.model.reward_model import load_tokenizer

    tokens = sum(g.num_tokens for g in encode_groups(load_tokenizer(str(six_block_model)), train_groups + eval_groups,
                                                     512))
    budget = 60.0
    machine = simulated_machine(cost=0.75 * budget / tokens)  # the features take three quarters of the budget
    events: list[dict] = []
    train(TrainConfig(model=str(six_block_model), mode="auto", trainable_layers=5, time_budget_s=budget),
          train_groups, tmp_path / "rm", eval_groups=eval_groups, on_step=events.append, started_at=machine())
    meta = metadata(tmp_path / "rm")
    assert meta["mode"] == "head" and meta["auto"]["kept"] == "head"
    assert "a pass of the top 5 blocks and an evaluation need about" in meta["auto"]["why"]
    assert machine.now - machine.start <= budget
    assert meta["plan"]["then_top_blocks"] == 0, "the plan did not promise the top blocks"
    assert not kept, "the features pass kept no hidden states for a pass that could not fit"


def test_without_held_out_prompts_auto_stays_head(tiny_model_dir, demo_split, tmp_path, private_cache):
    train(TrainConfig(model=str(tiny_model_dir), time_budget_s=60), demo_split[0], tmp_path / "rm")
    meta = metadata(tmp_path / "rm")
    assert meta["mode"] == "head" and meta["auto"]["kept"] == "head"
    assert meta["plan"]["then_top_blocks"] == 0


def test_the_better_held_out_accuracy_wins_and_a_tie_or_a_cut_keeps_the_head():
    head = {"eval_accuracy": 0.70}
    assert top_blocks_won(head, {"eval_accuracy": 0.75}, stopped=False)[0]
    assert not top_blocks_won(head, {"eval_accuracy": 0.70}, stopped=False)[0]
    assert not top_blocks_won(head, {"eval_accuracy": 0.65}, stopped=False)[0]
    assert not top_blocks_won(head, {"eval_accuracy": 0.90, "eval_partial": True}, stopped=False)[0]
    assert not top_blocks_won(head, {"eval_accuracy": 0.90}, stopped=True)[0]


def test_a_pass_of_the_top_blocks_costs_their_share_of_the_trunk_where_the_hidden_states_were_kept():
    class Group:
        num_tokens = 100

    kept, new = Group(), Group()
    is_kept = lambda group: group is kept  # noqa: E731
    assert top_blocks_seconds([kept], 0.01, 0.25, is_kept, training=True) == pytest.approx(100 * 0.01 * 0.75)
    assert top_blocks_seconds([new], 0.01, 0.25, is_kept, training=True) == pytest.approx(100 * 0.01 * 1.75)
    assert top_blocks_seconds([kept], 0.01, 0.25, is_kept, training=False) == pytest.approx(100 * 0.01 * 0.25)
