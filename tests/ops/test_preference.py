import math

import pytest
import torch

from rlhf_lightning.ops import last_token_index, pair_weights, preference_loss


def softplus_neg(x: float) -> float:
    """-log sigmoid(x) = log(1 + e^-x)"""
    return math.log1p(math.exp(-x))


def test_pairwise_loss_hand_computed():
    scores = torch.tensor([2.0, 0.0])
    out = preference_loss(scores, torch.tensor([0]), torch.tensor([1]), torch.tensor([0]))
    assert out.loss.item() == pytest.approx(softplus_neg(2.0))  # 0.126928
    assert out.score_diff.tolist() == [2.0]


def test_margin_is_subtracted_from_the_score_difference():
    scores = torch.tensor([2.0, 0.0])
    out = preference_loss(scores, torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), margin=torch.tensor([1.0]))
    assert out.loss.item() == pytest.approx(softplus_neg(1.0))  # 0.313262


def test_ranking_pairs_are_averaged_within_their_prompt_then_over_prompts():
    # sequence 0,1: a chosen/rejected pair (prompt 0); sequences 2,3,4: a ranking best to worst (prompt 1)
    scores = torch.tensor([2.0, 0.0, 3.0, 1.0, 0.0])
    better = torch.tensor([0, 2, 2, 3])
    worse = torch.tensor([1, 3, 4, 4])
    group = torch.tensor([0, 1, 1, 1])
    out = preference_loss(scores, better, worse, group)
    ranking = (softplus_neg(2.0) + softplus_neg(3.0) + softplus_neg(1.0)) / 3  # 0.162926
    assert out.loss.item() == pytest.approx((softplus_neg(2.0) + ranking) / 2)
    assert out.pair_weights.tolist() == pytest.approx([0.5, 1 / 6, 1 / 6, 1 / 6])


def test_centering_penalises_the_squared_pair_sum():
    scores = torch.tensor([1.0, -3.0])
    plain = preference_loss(scores, torch.tensor([0]), torch.tensor([1]), torch.tensor([0]))
    centred = preference_loss(scores, torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), center_coef=0.01)
    assert (centred.loss - plain.loss).item() == pytest.approx(0.01 * (1.0 - 3.0) ** 2)


def test_gradient_pushes_better_up_and_worse_down():
    scores = torch.tensor([0.5, 0.5], requires_grad=True)
    preference_loss(scores, torch.tensor([0]), torch.tensor([1]), torch.tensor([0])).loss.backward()
    assert scores.grad[0] < 0 < scores.grad[1]  # descent raises the preferred score
    assert scores.grad[0].item() == pytest.approx(-0.5)  # d/dx log(1 + e^-x) at x = 0


def test_pair_weights_handle_sparse_group_ids():
    assert pair_weights(torch.tensor([0, 0, 5])).tolist() == pytest.approx([0.25, 0.25, 0.5])


def test_last_token_index_for_right_left_and_no_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 0]
