"""PPO math against hand-computed tensors."""

import math

import pytest
import torch

from rlhf_lightning.ops.ppo import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    kl_per_token,
    penalize_unfinished,
    ppo_policy_loss,
    ppo_value_loss,
    token_rewards,
    truncate_after_stop,
)

EOS, EOT, PAD = 2, 3, 0


def test_truncation_keeps_the_first_stop_token_and_masks_the_rest():
    responses = torch.tensor([[5, 6, EOS, 7, EOS], [5, 6, 7, 8, 9], [EOT, 5, 5, 5, 5]])
    ids, mask, ended = truncate_after_stop(responses, [EOS, EOT], PAD)
    assert ids.tolist() == [[5, 6, EOS, PAD, PAD], [5, 6, 7, 8, 9], [EOT, PAD, PAD, PAD, PAD]]
    assert mask.tolist() == [[True, True, True, False, False], [True] * 5, [True, False, False, False, False]]
    assert ended.tolist() == [True, False, True]


def test_kl_estimators():
    lp, ref = torch.tensor([math.log(0.5), math.log(0.2)]), torch.tensor([math.log(0.25), math.log(0.4)])
    # k1 = log p - log q
    assert kl_per_token(lp, ref, "k1").tolist() == pytest.approx([math.log(2.0), math.log(0.5)])
    # k3 = (q/p - 1) - log(q/p): q/p = 0.5 -> -0.5 + ln 2; q/p = 2 -> 1 - ln 2; never negative
    assert kl_per_token(lp, ref, "k3").tolist() == pytest.approx([-0.5 + math.log(2.0), 1.0 - math.log(2.0)])
    same = torch.tensor([-1.3, -0.2])
    assert kl_per_token(same, same, "k1").tolist() == [0.0, 0.0]  # policy == reference: exactly 0
    assert kl_per_token(same, same, "k3").tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="k2"):
        kl_per_token(same, same, "k2")


def test_unfinished_responses_are_penalised():
    scores, ended = torch.tensor([1.5, 2.0]), torch.tensor([True, False])
    assert penalize_unfinished(scores, ended, -1.0, "replace").tolist() == [1.5, -1.0]
    assert penalize_unfinished(scores, ended, 1.0, "subtract").tolist() == [1.5, 1.0]


def test_score_lands_on_the_last_response_token_and_kl_on_every_one():
    scores = torch.tensor([2.0, -1.0])
    kl = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.5, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    out = token_rewards(scores, kl, mask, beta=0.1)
    expected_non_score = torch.tensor([[-0.01, -0.02, -0.03, 0.0], [-0.05, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(out.non_score, expected_non_score)
    torch.testing.assert_close(out.rewards, expected_non_score + torch.tensor([[0, 0, 2.0, 0], [-1.0, 0, 0, 0]]))


def test_gae_hand_computed():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0]])
    values = torch.tensor([[0.5, 0.5, 0.5, 7.0]])
    mask = torch.tensor([[True, True, True, False]])  # the 4th position is padding: ignored
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # A2 = 1 - 0.5 = 0.5; A1 = (0 + 0.5 - 0.5) + 0.95 * 0.5; A0 = 0 + 0.95 * A1
    torch.testing.assert_close(adv, torch.tensor([[0.45125, 0.475, 0.5, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.95125, 0.975, 1.0, 0.0]]))


def test_gae_with_discount():
    adv, _ = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool), 0.5, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 1.0]]))  # A0 = 0 + 0.5 * 0 - 0 + 0.5 * 1 * A1


def test_policy_loss_clipping_hand_computed():
    old = torch.zeros(1, 3)
    new = torch.tensor([[math.log(1.5), math.log(1.5), 0.0]])
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    out = ppo_policy_loss(new, old, adv, torch.ones(1, 3, dtype=torch.bool), clip_eps=0.2)
    # token 0: A>0, r=1.5 clipped to 1.2 -> -1.2 (clip binds); token 1: A<0 -> max(1.5, 1.2) = 1.5;
    # token 2: r = 1 -> -2
    assert out.loss.item() == pytest.approx((-1.2 + 1.5 - 2.0) / 3)
    assert out.clipfrac.item() == pytest.approx(1 / 3)
    assert out.approxkl.item() == pytest.approx(0.5 * 2 * math.log(1.5) ** 2 / 3)
    assert out.ratio.item() == pytest.approx((1.5 + 1.5 + 1.0) / 3)


def test_policy_loss_at_the_start_of_an_iteration_has_ratio_one_and_no_kl():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    out = ppo_policy_loss(lp, lp.detach(), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2, dtype=torch.bool))
    assert out.ratio.item() == 1.0 and out.approxkl.item() == 0.0 and out.clipfrac.item() == 0.0
    out.loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.5, 0.5]]))  # d/dlp of -A * exp(lp - old) / n


def test_value_loss_clipping_hand_computed():
    values, old, returns = torch.tensor([[1.0, 0.6]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[0.0, 1.0]])
    loss, clipfrac = ppo_value_loss(values, old, returns, torch.ones(1, 2, dtype=torch.bool), clip=0.2)
    # token 0: V = 1.0 -> sq 1.0; clipped V = 0.7 -> 0.49; max 1.0
    # token 1: V = 0.6 -> sq 0.16; clipped V = 0.6 (within 0.2) -> 0.16
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.16) / 2)
    assert clipfrac.item() == 0.0
    loss, clipfrac = ppo_value_loss(
        torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]]), torch.ones(1, 1, dtype=torch.bool)
    )
    # V = 1.0 -> 1.0; clipped 0.7 -> 1.69: the clipped error binds
    assert loss.item() == pytest.approx(0.5 * 1.69) and clipfrac.item() == 1.0


def test_adaptive_kl_controller_follows_the_target_and_resumes():
    ctl = AdaptiveKLController(beta=0.1, target=6.0, horizon=10_000)
    ctl.update(kl=12.0, n_steps=100)  # error clipped to +0.2
    assert ctl.beta == pytest.approx(0.1 * (1 + 0.2 * 100 / 10_000))
    ctl.update(kl=3.0, n_steps=100)  # error -0.5 clipped to -0.2
    assert ctl.beta == pytest.approx(0.1 * 1.002 * 0.998)
    ctl.update(kl=6.6, n_steps=1000)  # error +0.1
    expected = 0.1 * 1.002 * 0.998 * (1 + 0.1 * 0.1)
    assert ctl.beta == pytest.approx(expected)
    restored = AdaptiveKLController(beta=0.5, target=6.0, horizon=10_000)
    restored.load_state_dict(ctl.state_dict())
    assert restored.beta == pytest.approx(expected)
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 10)
    assert fixed.beta == 0.05


def _gae_by_recursion(rewards, values, mask, gamma, lam):
    """The textbook backward recursion, one token at a time."""
    rewards, values = rewards * mask, values * mask
    advantages, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        running = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * running
        advantages[:, t] = running
    return advantages * mask


@pytest.mark.parametrize(("gamma", "lam", "steps"), [(1.0, 0.95, 7), (0.9, 0.8, 33), (1.0, 1.0, 5), (0.99, 0.95, 600)])
def test_gae_in_closed_form_matches_the_recursion(gamma, lam, steps):
    g = torch.Generator().manual_seed(steps)
    rewards, values = torch.randn(4, steps, generator=g), torch.randn(4, steps, generator=g)
    lengths = torch.tensor([steps, 1, steps // 2, 0])
    mask = torch.arange(steps)[None, :] < lengths[:, None]
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    expected = _gae_by_recursion(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(advantages, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(returns, (expected + values * mask) * mask, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(advantages).all() and (advantages[3] == 0).all()


def test_gae_of_an_empty_batch_dimension():
    adv, ret = gae(torch.zeros(2, 0), torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.bool))
    assert adv.shape == ret.shape == (2, 0)
