"""The Bradley-Terry loss against a plain pair-by-pair reference, and its mathematical properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rmcore.data.encoding import EncodedGroup
from rmcore.model.reward_model import preference_matrix
from rmcore.training.loss import bradley_terry_loss, pair_index


def group(ranks, margin=0.0):
    return EncodedGroup([1], [[2]] * len(ranks), list(ranks), margin)


def reference_loss(rewards, groups):
    """Mean over prompts of the mean over each prompt's ordered pairs of -log sigma(r_w - r_l - m)."""
    per_prompt, offset = [], 0
    for g in groups:
        losses = []
        for w, rank_w in enumerate(g.ranks):
            for l, rank_l in enumerate(g.ranks):
                if rank_w is not None and rank_l is not None and rank_w < rank_l:
                    d = rewards[offset + w] - rewards[offset + l] - g.margin
                    losses.append(math.log1p(math.exp(-d)))
        if losses:
            per_prompt.append(sum(losses) / len(losses))
        offset += len(g.ranks)
    return sum(per_prompt) / len(per_prompt)


def test_loss_matches_the_pairwise_reference_with_ties_unranked_and_margins():
    groups = [group([1, 2, 3, None]), group([2, 1]), group([1, 1, 2], margin=0.5), group([None, 3, 1, 2, 2])]
    rewards = torch.tensor([0.3, -1.0, 2.0, 5.0, 0.1, 0.4, 1.5, 1.2, -0.7, 9.0, -2.0, 0.5, 0.0, 0.3])
    loss, stats = bradley_terry_loss(rewards, pair_index(groups))
    assert float(loss) == pytest.approx(reference_loss(rewards.tolist(), groups), rel=1e-6)
    assert stats["comparisons"] == 3 + 1 + 2 + 5


def test_ties_and_unranked_responses_give_no_pair():
    pairs = pair_index([group([1, 1, None])])
    assert len(pairs.winner) == 0
    pairs = pair_index([group([None, 2, 1, 2])])
    assert pairs.winner.tolist() == [2, 2] and pairs.loser.tolist() == [1, 3]


def test_gradient_is_minus_one_minus_sigma():
    r = torch.tensor([0.7, -0.2], requires_grad=True)
    loss, _ = bradley_terry_loss(r, pair_index([group([1, 2])]))
    loss.backward()
    s = torch.sigmoid(torch.tensor(0.9))
    assert r.grad.tolist() == pytest.approx([-(1 - s).item(), (1 - s).item()], rel=1e-6)


def test_center_term_adds_mean_squared_reward():
    r = torch.tensor([1.0, -3.0])
    base, _ = bradley_terry_loss(r, pair_index([group([1, 2])]))
    centered, _ = bradley_terry_loss(r, pair_index([group([1, 2])]), center_coefficient=0.1)
    assert float(centered - base) == pytest.approx(0.1 * 5.0)


def test_accuracy_counts_pairs_the_model_orders_right():
    _, stats = bradley_terry_loss(torch.tensor([3.0, 2.0, 1.0]), pair_index([group([1, 3, 2])]))
    assert stats["accuracy"] == pytest.approx(2 / 3)


rewards_st = st.lists(st.floats(-20, 20), min_size=2, max_size=9)


@settings(max_examples=200, deadline=None)
@given(rewards_st, st.floats(-50, 50))
def test_loss_is_positive_and_shift_invariant(values, shift):
    ranks = list(range(1, len(values) + 1))
    r = torch.tensor(values, dtype=torch.float64)
    loss, _ = bradley_terry_loss(r, pair_index([group(ranks)]))
    shifted, _ = bradley_terry_loss(r + shift, pair_index([group(ranks)]))
    assert float(loss) > 0
    assert float(shifted) == pytest.approx(float(loss), rel=1e-9, abs=1e-9)


@given(rewards_st)
def test_preference_matrix_is_complementary(values):
    p = preference_matrix(values)
    for i in range(len(values)):
        assert p[i][i] == pytest.approx(0.5)
        for j in range(len(values)):
            assert p[i][j] + p[j][i] == pytest.approx(1.0)
            assert 0.0 <= p[i][j] <= 1.0
