"""The fast paths equal the plain ones: structured packed attention, and micro-batched training steps."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rmcore.data import read_preferences, split_groups
from rmcore.model.batching import pack_groups, split_by_tokens
from rmcore.model.reward_model import PackedRewardModel, RewardModel
from rmcore.training.train import TrainConfig, train


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return RewardModel.load(tiny_model_dir, device="cpu")


def groups_of(model):
    """Rows with different prompt lengths, K = 1..5, and responses of different lengths."""
    return [model.encode("How do I keep bread fresh?", ["Wrap it.", "Freeze slices of it, please.", "No."]),
            model.encode("Hi", ["Hello there friend"]),
            model.encode("A much longer instruction " * 5, ["ok", "sure thing", "x", "yes indeed", "fine"])]


def rewards_and_grads(model: RewardModel, batch, layout):
    packed = PackedRewardModel(model.model)
    model.model.zero_grad(set_to_none=True)
    rewards = packed(batch, structured=layout is not None)
    (rewards * torch.arange(1, len(rewards) + 1)).sum().backward()  # every response weighs differently
    grads = {name: p.grad.clone() for name, p in model.model.named_parameters() if p.grad is not None}
    model.model.zero_grad(set_to_none=True)
    return rewards.detach(), grads


def test_structured_attention_equals_the_dense_block_mask_in_values_and_gradients(tiny):
    batch = pack_groups(groups_of(tiny), tiny.tokenizer.pad_token_id)
    dense, dense_grads = rewards_and_grads(tiny, batch, None)
    fast, fast_grads = rewards_and_grads(tiny, batch, batch.layout)
    assert fast.tolist() == pytest.approx(dense.tolist(), abs=1e-6)
    assert set(fast_grads) == set(dense_grads)
    for name, grad in dense_grads.items():
        scale = grad.abs().max().clamp_min(1e-12)
        assert ((fast_grads[name] - grad).abs().max() / scale) < 1e-4, name
    assert tiny.model.config._attn_implementation == "sdpa"  # switched only for the packed call


@pytest.mark.parametrize("structured", [True, False])
def test_one_row_of_several_groups_equals_a_row_each_in_values_and_gradients(tiny, structured):
    """Training's rows of several groups: no padding, and no group sees another (dense mask or structured)."""
    groups = groups_of(tiny)
    rows = pack_groups(groups, tiny.tokenizer.pad_token_id)
    one = pack_groups(groups, tiny.tokenizer.pad_token_id, row_tokens=10_000)
    assert one.input_ids.shape == (1, sum(g.num_tokens for g in groups)) and one.group_sizes == rows.group_sizes
    expected, expected_grads = rewards_and_grads(tiny, rows, rows.layout)
    got, got_grads = rewards_and_grads(tiny, one, one.layout if structured else None)
    assert got.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert set(got_grads) == set(expected_grads)
    for name, grad in expected_grads.items():
        scale = grad.abs().max().clamp_min(1e-12)
        assert ((got_grads[name] - grad).abs().max() / scale) < 1e-4, name


def test_rows_of_several_groups_stop_at_the_row_budget(tiny):
    groups = groups_of(tiny)  # a row budget of the first two groups' tokens puts the third in a row of its own
    budget = groups[0].num_tokens + groups[1].num_tokens
    batch = pack_groups(groups, tiny.tokenizer.pad_token_id, row_tokens=budget)
    assert batch.layout.groups_per_row == [2, 1] and batch.input_ids.shape[1] == max(budget, groups[2].num_tokens)
    single = pack_groups(groups, tiny.tokenizer.pad_token_id, row_tokens=1)  # every group is longer: a row each
    assert single.layout.groups_per_row == [1, 1, 1]
    assert torch.equal(single.input_ids, pack_groups(groups, tiny.tokenizer.pad_token_id).input_ids)


def test_scoring_uses_the_structured_path_and_matches_plain_transformers(tiny):
    enc = tiny.encode("How do I keep bread fresh?", ["Wrap it.", "Freeze slices.", "No."])
    seqs = [enc.prompt_ids + r for r in enc.response_ids]
    with torch.no_grad():
        plain = [tiny.model(input_ids=torch.tensor([s])).logits.item() for s in seqs]
    assert tiny.rewards_for([enc])[0] == pytest.approx(plain, abs=1e-5)


def test_split_by_tokens_keeps_groups_whole_and_within_budget():
    lengths = [50, 10, 300, 40, 20, 900]
    parts = split_by_tokens([0, 1, 2, 3, 4, 5], lengths, max_tokens=120)
    assert sorted(i for part in parts for i in part) == [0, 1, 2, 3, 4, 5]
    for part in parts:
        assert len(part) == 1 or len(part) * max(lengths[i] for i in part) <= 120
    assert [5] in parts and [2] in parts  # over-long groups go alone
    assert split_by_tokens([0, 1], [10, 10], 1000) == [[0, 1]]


def test_micro_batched_training_gives_the_same_model(tiny_model_dir, demo_path, tmp_path, private_cache):
    train_groups, _ = split_groups(read_preferences(demo_path).groups, 0.2, seed=0)
    saved = {}
    for max_tokens in (100_000, 64):  # one forward per batch, then one group per forward
        config = TrainConfig(model=str(tiny_model_dir), mode="full", epochs=1, lr=2e-3, batch_size=8,
                             max_length=256, center_coefficient=0.01, max_tokens=max_tokens, precision="float32")
        steps: list[dict] = []
        train(config, train_groups[:16], tmp_path / str(max_tokens),
              on_step=lambda e, steps=steps: steps.append(e) if e["event"] == "step" else None)
        saved[max_tokens] = (load_file(str(tmp_path / str(max_tokens) / "model.safetensors")), steps)
    (whole, whole_steps), (parts, part_steps) = saved[100_000], saved[64]
    for name, tensor in whole.items():
        assert torch.allclose(parts[name], tensor, atol=1e-5), name
    for a, b in zip(whole_steps, part_steps):
        for key in ("loss", "accuracy", "margin", "reward_mean", "reward_std", "comparisons"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
