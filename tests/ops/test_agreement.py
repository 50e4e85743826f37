"""Agreement between rankings with ties, against values worked out by hand."""

import math

import pytest

from rlhf_lightning.ops.agreement import groups_from_scores, kendall_tau_b, pairwise_agreement, ranks_from_groups


def test_identical_and_reversed_rankings():
    a = {1: 1, 2: 2, 3: 3}
    assert pairwise_agreement(a, a) == 1.0 and kendall_tau_b(a, a) == 1.0
    reverse = {1: 3, 2: 2, 3: 1}
    assert pairwise_agreement(a, reverse) == 0.0 and kendall_tau_b(a, reverse) == -1.0


def test_ties_by_hand():
    # a: 1 > 2 = 3 > 4; b: 1 > 2 > 3 > 4. Pairs (12 13 14 23 24 34): a signs - - - 0 - -, b - - - - - -.
    a, b = {1: 1, 2: 2, 3: 2, 4: 3}, {1: 1, 2: 2, 3: 3, 4: 4}
    assert pairwise_agreement(a, b) == pytest.approx(5 / 6)  # the tie in a meets a strict order in b
    # C = 5, D = 0, untied pairs: a 5, b 6 -> 5 / sqrt(30)
    assert kendall_tau_b(a, b) == pytest.approx(5 / math.sqrt(30))


def test_one_discordant_pair_of_three():
    a, b = {"x": 1, "y": 2, "z": 3}, {"x": 2, "y": 1, "z": 3}
    assert pairwise_agreement(a, b) == pytest.approx(2 / 3)
    assert kendall_tau_b(a, b) == pytest.approx((2 - 1) / 3)


def test_only_shared_candidates_count_and_undefined_cases_are_nan():
    assert pairwise_agreement({1: 1, 2: 2, 9: 3}, {1: 1, 2: 2, 8: 1}) == 1.0
    assert math.isnan(pairwise_agreement({1: 1}, {1: 1}))
    assert math.isnan(kendall_tau_b({1: 1, 2: 1}, {1: 1, 2: 2}))  # a ties everything: tau-b undefined
    assert pairwise_agreement({1: 1, 2: 1}, {1: 2, 2: 2}) == 1.0  # both tie the pair


def test_groups_and_ranks_round_trip():
    assert ranks_from_groups([[3], [1, 4], [2]]) == {3: 1, 1: 2, 4: 2, 2: 3}
    assert groups_from_scores({7: 0.5, 8: 2.0, 9: 0.5}) == [[8], [7, 9]]
    assert ranks_from_groups(groups_from_scores({"A": 1.0, "B": 3.0, "C": 2.0})) == {"B": 1, "C": 2, "A": 3}
