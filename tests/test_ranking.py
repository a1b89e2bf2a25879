"""Rank editing and the pair numbers the app shows, from rmcore.data.ranking."""

from __future__ import annotations

import math

import pytest

from rmcore.data import RankedGroup, ordered_pairs
from rmcore.data.ranking import (
    best_response,
    dense_ranks,
    pair_loss,
    preference_probability,
    read_ranks,
    with_best_response,
)


def test_dense_ranks_keep_order_and_ties_and_unranked():
    assert dense_ranks([3, 7, 3, None, 10]) == [1, 2, 1, None, 3]
    assert dense_ranks([None, None]) == [None, None]


def test_a_labelers_response_becomes_the_best_and_the_rest_move_down():
    group = RankedGroup([{"role": "user", "content": "q"}], ["a", "b", "c"], [1, 2, None], source="f:3")
    edited = with_best_response(group, "mine")
    assert edited.responses == ["mine", "a", "b", "c"] and edited.ranks == [1, 2, 3, None]
    assert edited.source == "f:3" and group.responses == ["a", "b", "c"], "the original is left as it was"
    replaced = with_best_response(group, "a, improved", replace=0)
    assert replaced.responses == ["a, improved", "b", "c"] and replaced.ranks == [1, 2, None]


def test_best_response_and_read_ranks():
    group = RankedGroup([{"role": "user", "content": "q"}], ["a", "b", "c"], [2, 1, 1])
    assert best_response(group) == "b"
    assert best_response(RankedGroup([], ["a"], [None])) == ""
    assert read_ranks([1, None, 2.0]) == [1, None, 2]


def test_ordered_pairs_skip_ties_and_unranked():
    assert ordered_pairs([1, 2, 2, None]) == [(0, 1), (0, 2)]


@pytest.mark.parametrize("d", [-800.0, -35.0, -3.0, 0.0, 2.5, 40.0, 800.0])
def test_probability_and_loss_are_the_bradley_terry_formulas_without_overflow(d):
    p = preference_probability(d)
    assert 0.0 <= p <= 1.0 and math.isclose(p + preference_probability(-d), 1.0)
    assert math.isclose(pair_loss(d), -math.log(p), rel_tol=1e-9, abs_tol=1e-12) if 0 < p else pair_loss(d) == -d
