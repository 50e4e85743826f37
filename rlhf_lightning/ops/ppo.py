"""The math of PPO for RLHF, as pure functions over ``(b, t)`` response tensors.

Shapes: ``b`` responses of up to ``t`` tokens, right-aligned to the prompt (position 0 is the first
response token). ``mask (b, t)`` is True on response tokens up to and including the first stop token; the
tokens after it carry no reward, no KL, no loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch

from rlhf_lightning.ops.masked import masked_mean


def truncate_after_stop(
    responses: torch.Tensor, stop_ids: Sequence[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each response after its first stop token (EOS). ``responses (b, t)`` long.

    Returns ``(responses, mask, ended)``: responses with everything after the first stop replaced by
    ``pad_id``; ``mask (b, t)`` bool, True through the stop token; ``ended (b,)`` bool, whether a stop
    token occurred at all (a response that ran out of room did not end).
    """
    is_stop = torch.isin(responses, torch.as_tensor(list(stop_ids), device=responses.device))
    # number of stop tokens strictly before each position: 0 means "still inside the response"
    stops_before = torch.cumsum(is_stop.long(), dim=-1) - is_stop.long()
    mask = stops_before == 0
    return responses.masked_fill(~mask, pad_id), mask, is_stop.any(-1)


def kl_per_token(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: Literal["k1", "k3"] = "k1"
) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from log-probs ``(b, t)`` of the sampled tokens.

    ``k1 = log p - log q`` (unbiased, can be negative per token); ``k3 = (r - 1) - log r`` with
    ``r = q / p`` (unbiased, always >= 0, lower variance). Both from J. Schulman, "Approximating KL
    divergence" (2020).

    Unbiased *values* do not make unbiased *gradients*. As a reward (a constant to the policy gradient) an
    estimate ``k`` pulls the policy along ``E_p[grad log p * k]``: for ``k1`` that is ``grad KL(p || q)``, for
    ``k3`` it is not. Differentiated as a loss on-policy, ``k1`` gives 0 in expectation and ``k3`` gives
    ``grad KL(q || p)``, the other direction; weighted by the ratio ``p / p_old`` both give ``grad KL(p || q)``
    (:func:`kl_penalty_loss`). See "On a few pitfalls in KL divergence gradient estimation for RL" (2025,
    arXiv:2506.09477).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")


def kl_penalty_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    estimator: Literal["k1", "k3"] = "k3",
) -> torch.Tensor:
    """The KL penalty as a loss term: ``mean((p / p_old) * k)`` over response tokens, ``k`` the
    :func:`kl_per_token` estimate of the current log-probs ``(b, t)`` against the reference's, on tokens
    sampled from ``p_old`` (``old_logprobs``, no gradient). 0-d.

    Its gradient where ``p = p_old`` is, in expectation over the sampled token, exactly the gradient of the
    token's KL(p || q) given the tokens before it: ``E[grad log p * k + grad k] = E[grad log p * log(p / q)]``
    for both ``k1`` (``grad k1 = grad log p``, of mean 0) and ``k3`` (``grad k3 = (1 - q/p) grad log p``). Without
    the ratio, ``k3`` would give the gradient of KL(q || p) and ``k1`` nothing. Being per token, it leaves out
    how a token changes the KL of the tokens after it (a KL penalty in the rewards, with returns, keeps that).
    """
    ratio = (logprobs - old_logprobs).exp()
    return masked_mean(ratio * kl_per_token(logprobs, ref_logprobs, estimator), mask)


def penalize_unfinished(
    scores: torch.Tensor, ended: torch.Tensor, penalty: float, mode: Literal["replace", "subtract"] = "replace"
) -> torch.Tensor:
    """Scores ``(b,)`` with responses that never emitted a stop token penalised: their score replaced by
    ``penalty`` (``replace``), or lowered by it (``subtract``)."""
    if mode == "replace":
        return torch.where(ended, scores, torch.full_like(scores, penalty))
    if mode == "subtract":
        return torch.where(ended, scores, scores - penalty)
    raise ValueError(f"unknown no-EOS penalty mode {mode!r}; use 'replace' or 'subtract'")


class TokenRewards(NamedTuple):
    rewards: torch.Tensor
    """``(b, t)``: ``-beta * kl`` on every response token, plus the score on the last one."""
    non_score: torch.Tensor
    """``(b, t)``: the KL part alone."""


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> TokenRewards:
    """Place the sequence score ``(b,)`` on the last response token and a KL penalty ``-beta * kl`` ``(b, t)`` on
    every response token.

    The KL penalty in the rewards (InstructGPT): the value function learns the KL-regularised return, and each
    token is charged the KL of the tokens it leads to. With ``k1`` the policy gradient is then that of the
    sequence KL; with ``k3`` it is not (see :func:`kl_per_token`). ``beta = 0`` leaves the score alone.
    """
    non_score = -beta * kl * mask
    last = (mask.long().cumsum(-1) == mask.long().sum(-1, keepdim=True)) & mask
    return TokenRewards(non_score + last * scores.unsqueeze(-1), non_score)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens (Schulman et al. 2016, "High-dimensional
    continuous control using generalized advantage estimation"). Returns ``(advantages, returns)``, ``(b, t)``.

    ``delta_t = r_t + gamma * V_{t+1} - V_t``; ``A_t = delta_t + gamma * lam * A_{t+1}``; the value after
    the last response token is 0 (the episode ends). ``returns = advantages + values`` are the value
    targets. Positions outside ``mask`` are 0.

    The recursion is evaluated in closed form, ``A_t = sum_{k >= t} (gamma * lam)^(k - t) delta_k``, as one
    ``(b, t) @ (t, t)`` product with an upper-triangular matrix of discounts: a few kernels whatever the
    length, instead of one small kernel per token (the difference on a GPU). The powers are built by
    cumulative products, so a discount below 1 never overflows.
    """
    rewards, values = rewards * mask, values * mask
    steps = rewards.shape[-1]
    next_values = torch.nn.functional.pad(values[:, 1:], (0, 1))
    deltas = rewards + gamma * next_values - values
    # discounts[k, t] = (gamma * lam)^(k - t) for k >= t, else 0
    decay = torch.full((steps,), gamma * lam, dtype=deltas.dtype, device=deltas.device)
    powers = torch.cat([decay.new_ones(1), decay[1:].cumprod(0)]) if steps else decay
    offsets = torch.arange(steps, device=deltas.device)
    lag = offsets[:, None] - offsets[None, :]
    discounts = torch.where(lag >= 0, powers[lag.clamp(min=0)], torch.zeros((), dtype=deltas.dtype))
    advantages = (deltas @ discounts) * mask
    return advantages, (advantages + values) * mask


class PolicyLoss(NamedTuple):
    loss: torch.Tensor
    clipfrac: torch.Tensor
    """Fraction of tokens where the clipped objective was the binding one."""
    approxkl: torch.Tensor
    """``0.5 * mean((log p - log p_old)^2)``: how far the policy moved during this update."""
    ratio: torch.Tensor
    """Mean probability ratio ``p / p_old`` (1 on the first minibatch of an iteration)."""


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> PolicyLoss:
    """Clipped surrogate ``mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps)))`` over response tokens."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approxkl = 0.5 * masked_mean(log_ratio.pow(2), mask)
        mean_ratio = masked_mean(ratio, mask)
    return PolicyLoss(loss, clipfrac, approxkl, mean_ratio)


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """``0.5 * mean(max((V - R)^2, (V_clipped - R)^2))`` with ``V_clipped`` kept within ``clip`` of the
    rollout's values. Returns ``(loss, clipfrac)``."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    sq, sq_clipped = (values - returns).pow(2), (clipped - returns).pow(2)
    loss = 0.5 * masked_mean(torch.maximum(sq, sq_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((sq_clipped > sq).float(), mask)
    return loss, clipfrac


class FixedKLController:
    """A constant KL coefficient ``beta``."""

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def update(self, kl: float, n_steps: int) -> None:
        """Nothing to adapt."""

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = state["beta"]


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. (2019): move ``beta`` so that the measured KL tracks ``target``.

    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta *= 1 + e * n_steps / horizon``, where ``n_steps`` is
    the number of samples (responses) seen since the last update.
    """

    def __init__(self, beta: float, target: float, horizon: int) -> None:
        super().__init__(beta)
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL needs target > 0 and horizon > 0")
        self.target, self.horizon = target, horizon

    def update(self, kl: float, n_steps: int) -> None:
        if not math.isfinite(kl):
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_steps / self.horizon
