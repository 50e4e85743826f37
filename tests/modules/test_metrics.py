import math

import pytest
import torch

from rlhf_lightning.modules.metrics import PreferenceMetrics, TokenNLL, WeightedMean


def test_preference_metrics_weigh_every_prompt_equally():
    metric = PreferenceMetrics()
    # prompt 0: one pair, right (2 > 0); prompt 1: a 3-way ranking, 2 of its 3 pairs right
    scores = torch.tensor([2.0, 0.0, 1.0, 3.0, 0.0])
    metric.update(scores, torch.tensor([0, 2, 2, 3]), torch.tensor([1, 3, 4, 4]), torch.tensor([0, 1, 1, 1]))
    out = metric.compute()
    assert out["accuracy"].item() == pytest.approx((1.0 + 2 / 3) / 2)
    # margins: prompt 0: 2; prompt 1: (1-3, 1-0, 3-0) / 3 = 2/3
    assert out["margin"].item() == pytest.approx((2.0 + 2 / 3) / 2)
    # preferred scores: prompt 0: 2; prompt 1: (1 + 1 + 3) / 3
    assert out["chosen_mean"].item() == pytest.approx((2.0 + 5 / 3) / 2)
    metric.update(torch.tensor([1.0, 1.0]), torch.tensor([0]), torch.tensor([1]), torch.tensor([0]))
    assert metric.compute()["accuracy"].item() == pytest.approx((1.0 + 2 / 3 + 0.5) / 3)  # a tie is half right


def test_token_nll_is_a_per_token_mean_across_batches():
    metric = TokenNLL()
    metric.update(torch.tensor([[-1.0, -3.0]]), torch.tensor([[True, True]]))
    metric.update(torch.tensor([[-2.0, -9.0]]), torch.tensor([[True, False]]))
    assert metric.compute().item() == pytest.approx(2.0)  # (1 + 3 + 2) / 3 tokens
    assert math.exp(metric.compute().item()) == pytest.approx(math.e**2)


def test_weighted_mean_weighs_batches_by_their_prompts():
    # batch losses 0.5 over 2 prompts and 2.0 over 1: 3 prompts of mean (1 + 2) / 3 = 1, not (0.5 + 2) / 2
    metric = WeightedMean()
    with pytest.warns(UserWarning, match="called before"):
        assert metric.compute().item() == 0.0  # nothing seen yet
    metric.update(torch.tensor(0.5), torch.tensor(2))
    metric.update(torch.tensor(2.0), 1)
    assert metric.compute().item() == pytest.approx(1.0)
    metric.update(torch.tensor([4.0, 0.0]), torch.tensor([1.0, 2.0]))  # element-wise weights: 4 more over 3
    assert metric.compute().item() == pytest.approx(7 / 6)
    metric.reset()
    metric.update(torch.tensor([3.0, 5.0]), 2)  # one weight for every entry: (6 + 10) / 4
    assert metric.compute().item() == pytest.approx(4.0)
