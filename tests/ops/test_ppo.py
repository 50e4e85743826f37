"""PPO math against hand-computed tensors."""

import math

import pytest
import torch

from rlhf_lightning.ops.ppo import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    kl_penalty_loss,
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


# --- which KL gradient each placement of the penalty gives, enumerated exactly ------------------------------------
# A categorical policy over 5 actions (logits are the parameters) against a fixed reference. Every action is
# one response of one token; the expected gradient of a per-sample loss is sum_a pi(a) * grad loss(a), the
# probabilities held fixed (they are the sampling distribution). Float64, so "equal" means equal.


def _categorical(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(5, generator=g, dtype=torch.float64).requires_grad_()
    ref = torch.log_softmax(torch.randn(5, generator=g, dtype=torch.float64), -1)
    return logits, ref


def _expected_gradient(logits, loss_of_action) -> torch.Tensor:
    """``sum_a pi(a) * grad loss(a)`` with ``pi`` detached: the gradient an on-policy sample gives on average."""
    probs = torch.softmax(logits, -1).detach()
    total = sum(probs[a] * loss_of_action(a) for a in range(len(probs)))
    return torch.autograd.grad(total, logits)[0]


def _true_kl_gradient(logits, ref, reverse: bool = False) -> torch.Tensor:
    """Autograd of the exact KL(pi || ref) (or KL(ref || pi) with ``reverse``)."""
    logp = torch.log_softmax(logits, -1)
    kl = (ref.exp() * (ref - logp)).sum() if reverse else (logp.exp() * (logp - ref)).sum()
    return torch.autograd.grad(kl, logits)[0]


def _one_token(logits, ref, a):
    """Log-probs ``(1, 1)`` of action ``a`` under the policy and the reference, and its mask."""
    return torch.log_softmax(logits, -1)[a].view(1, 1), ref[a].view(1, 1), torch.ones(1, 1, dtype=torch.bool)


def _penalty_in_reward_loss(logits, ref, estimator, a):
    """The PPO loss of action ``a`` when the only reward is the KL penalty (beta 1) in the rewards: rewards,
    GAE (values 0, gamma = lambda = 1: the advantage is the return) and the clipped surrogate, at p = p_old."""
    logp, ref_logp, mask = _one_token(logits, ref, a)
    kl = kl_per_token(logp.detach(), ref_logp, estimator)
    rewards = token_rewards(torch.zeros(1, dtype=torch.float64), kl, mask, beta=1.0).rewards
    advantages, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, lam=1.0)
    return ppo_policy_loss(logp, logp.detach(), advantages, mask).loss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k1_in_the_rewards_gives_the_exact_kl_gradient(seed):
    logits, ref = _categorical(seed)
    expected = _expected_gradient(logits, lambda a: _penalty_in_reward_loss(logits, ref, "k1", a))
    torch.testing.assert_close(expected, _true_kl_gradient(logits, ref), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k3_in_the_rewards_has_the_kls_value_but_not_its_gradient(seed):
    logits, ref = _categorical(seed)
    logp = torch.log_softmax(logits, -1).detach()
    true_kl = (logp.exp() * (logp - ref)).sum()
    assert (logp.exp() * kl_per_token(logp, ref, "k3")).sum().item() == pytest.approx(true_kl.item(), rel=1e-12)
    expected = _expected_gradient(logits, lambda a: _penalty_in_reward_loss(logits, ref, "k3", a))
    true = _true_kl_gradient(logits, ref)
    # the documented bias: E[grad log p * k3] is not grad KL(p || q), by far
    assert (expected - true).norm() > 0.2 * true.norm(), (expected, true)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_ratio_weighted_kl_loss_gives_the_exact_kl_gradient(estimator, seed):
    logits, ref = _categorical(seed)

    def loss(a):
        logp, ref_logp, mask = _one_token(logits, ref, a)
        return kl_penalty_loss(logp, logp.detach(), ref_logp, mask, estimator)

    torch.testing.assert_close(_expected_gradient(logits, loss), _true_kl_gradient(logits, ref), rtol=1e-10, atol=1e-12)
    logp = torch.log_softmax(logits, -1).detach()
    value = kl_penalty_loss(logp.view(5, 1), logp.view(5, 1), ref.view(5, 1), torch.ones(5, 1, dtype=torch.bool),
                            estimator)  # fmt: skip
    assert value.item() == pytest.approx(kl_per_token(logp, ref, estimator).mean().item())  # ratio 1: the mean


def test_without_the_ratio_k3_as_a_loss_gives_the_reverse_kls_gradient_and_k1_none():
    logits, ref = _categorical(0)

    def plain(estimator):
        def loss(a):
            logp, ref_logp, _ = _one_token(logits, ref, a)
            return kl_per_token(logp, ref_logp, estimator).sum()

        return loss

    k3 = _expected_gradient(logits, plain("k3"))
    torch.testing.assert_close(k3, _true_kl_gradient(logits, ref, reverse=True), rtol=1e-10, atol=1e-12)
    assert (k3 - _true_kl_gradient(logits, ref)).norm() > 0.2 * k3.norm()
    torch.testing.assert_close(_expected_gradient(logits, plain("k1")), torch.zeros(5, dtype=torch.float64))


def test_over_two_tokens_the_reward_placement_is_exact_and_the_loss_placement_per_token():
    """Responses of two tokens (a, b), tabular: ``pi(a)``, ``pi(b | a)``. The sequence KL's gradient includes
    how the first token changes the KL of the second; with k1 in the rewards (returns: each token is charged
    the KL after it) the policy gradient has it, the per-token loss does not."""
    g = torch.Generator().manual_seed(3)
    first = torch.randn(3, generator=g, dtype=torch.float64).requires_grad_()
    second = torch.randn(3, 3, generator=g, dtype=torch.float64).requires_grad_()
    ref_first = torch.log_softmax(torch.randn(3, generator=g, dtype=torch.float64), -1)
    ref_second = torch.log_softmax(torch.randn(3, 3, generator=g, dtype=torch.float64), -1)
    params = (first, second)
    mask = torch.ones(1, 2, dtype=torch.bool)

    def token_logprobs(a, b):
        lp1, lp2 = torch.log_softmax(first, -1), torch.log_softmax(second, -1)
        return torch.stack([lp1[a], lp2[a, b]]).view(1, 2), torch.stack([ref_first[a], ref_second[a, b]]).view(1, 2)

    def expected(loss_of_sequence):
        with torch.no_grad():
            p1, p2 = torch.softmax(first, -1), torch.softmax(second, -1)
        total = sum(p1[a] * p2[a, b] * loss_of_sequence(a, b) for a in range(3) for b in range(3))
        return torch.autograd.grad(total, params)

    def in_reward(a, b):  # summed over the two tokens (the loss is a token mean)
        logp, ref_logp = token_logprobs(a, b)
        rewards = token_rewards(torch.zeros(1, dtype=torch.float64), kl_per_token(logp.detach(), ref_logp), mask, 1.0)
        advantages, _ = gae(rewards.rewards, torch.zeros_like(logp), mask, gamma=1.0, lam=1.0)
        return 2 * ppo_policy_loss(logp, logp.detach(), advantages, mask).loss

    def in_loss(a, b):
        logp, ref_logp = token_logprobs(a, b)
        return 2 * kl_penalty_loss(logp, logp.detach(), ref_logp, mask, "k3")

    lp1, lp2 = torch.log_softmax(first, -1), torch.log_softmax(second, -1)
    per_step = (lp2.exp() * (lp2 - ref_second)).sum(-1)  # KL of the second token given the first
    sequence_kl = (lp1.exp() * (lp1 - ref_first + per_step)).sum()
    true = torch.autograd.grad(sequence_kl, params, retain_graph=True)
    # the per-token loss: each token's conditional KL differentiated with the states' distribution held fixed
    partial = (lp1.exp() * (lp1 - ref_first)).sum() + (lp1.exp().detach() * per_step).sum()
    partial = torch.autograd.grad(partial, params)
    for got, want in zip(expected(in_reward), true):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for got, want in zip(expected(in_loss), partial):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert (expected(in_loss)[0] - true[0]).norm() > 0.05 * true[0].norm()  # the first token's part is missing
