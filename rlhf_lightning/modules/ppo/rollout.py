"""The first half of a PPO iteration: sample responses, score them, turn scores and the KL into per-token
rewards, and estimate advantages: an :class:`Experience` the update trains on.

Everything here runs without gradients, in eval mode. Shapes: ``b`` prompts, ``p`` prompt tokens (left
padded), ``r`` response tokens (right padded after each response's first stop token).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from rlhf_lightning.evaluation.compare import eos_penalty
from rlhf_lightning.models.adapters import Role, active, response_logprobs, role_scores, role_values, sample_from_role
from rlhf_lightning.models.generation import GenerationConfig
from rlhf_lightning.models.score_function import ScoreFunction, require_finite
from rlhf_lightning.modules.ppo.config import PPOConfig, RewardShaping
from rlhf_lightning.ops import (
    content_mask,
    distinct_n,
    empty_fraction,
    empty_responses,
    gae,
    kl_per_token,
    masked_mean,
    pearson,
    token_rewards,
    whiten,
)


class Rollout(NamedTuple):
    """Sampled responses to a batch of prompts."""

    sequences: torch.Tensor
    """``(b, p + r)`` prompt and response ids."""
    attention_mask: torch.Tensor
    """``(b, p + r)``."""
    mask: torch.Tensor
    """``(b, r)`` bool: the response tokens through the first stop token."""
    ended: torch.Tensor
    """``(b,)`` bool: the response ended with a stop token (False: it ran out of room)."""
    prompt_length: int
    prompt_texts: Sequence[str] | None = None
    """The prompts as the user wrote them (what a reward function gets), when known."""


class Experience(NamedTuple):
    """One rollout batch, everything ``(b, r)`` over response tokens unless noted."""

    sequences: torch.Tensor  # (b, p + r) prompt and response ids
    attention_mask: torch.Tensor  # (b, p + r)
    mask: torch.Tensor  # response tokens through the first EOS
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class RolloutStats(NamedTuple):
    """Per-iteration statistics of a rollout (0-d tensors), logged under TRL's names (:data:`ROLLOUT_TAGS`)."""

    kl: torch.Tensor
    """Mean summed k1 KL of a response to the reference, nats (all ranks, whatever the estimator)."""
    entropy: torch.Tensor
    non_score_reward: torch.Tensor
    rlhf_reward: torch.Tensor
    scores: torch.Tensor
    """Mean shaped score (clipped, penalised) the policy is optimised on."""
    raw_scores: torch.Tensor
    """Mean score of the reward model or function as it came."""
    kl_coef: torch.Tensor
    num_eos_tokens: torch.Tensor
    ended_fraction: torch.Tensor
    response_length: torch.Tensor
    values_mean: torch.Tensor
    distinct_1: torch.Tensor
    distinct_2: torch.Tensor
    empty_fraction: torch.Tensor
    score_length_corr: torch.Tensor

    def tags(self) -> dict[str, torch.Tensor]:
        return {ROLLOUT_TAGS[name]: value for name, value in self._asdict().items()}


ROLLOUT_TAGS = {
    "kl": "objective/kl",
    "entropy": "objective/entropy",
    "non_score_reward": "objective/non_score_reward",
    "rlhf_reward": "objective/rlhf_reward",
    "scores": "objective/scores",
    "raw_scores": "objective/raw_scores",
    "kl_coef": "objective/kl_coef",
    "num_eos_tokens": "val/num_eos_tokens",
    "ended_fraction": "rollout/ended_fraction",
    "response_length": "rollout/response_length",
    "values_mean": "val/values_mean",
    "distinct_1": "rollout/distinct_1",
    "distinct_2": "rollout/distinct_2",
    "empty_fraction": "rollout/empty_fraction",
    "score_length_corr": "objective/score_length_corr",
}
"""TensorBoard tag of each :class:`RolloutStats` field (``val/`` is TRL's prefix for the value function)."""


@torch.no_grad()
def sample(
    role: Role,
    prompts: torch.Tensor,
    prompt_mask: torch.Tensor,
    config: GenerationConfig,
    stop_ids: list[int],
    pad_id: int,
    prompt_texts: Sequence[str] | None = None,
) -> Rollout:
    """``role``'s responses to left-padded prompts ``(b, p)``, each cut after its first stop token."""
    sequences, attention_mask, mask, ended = sample_from_role(role, prompts, prompt_mask, config, stop_ids, pad_id)
    return Rollout(sequences, attention_mask, mask, ended, prompts.shape[1], prompt_texts)


class RewardScorer:
    """The raw reward ``(b,)`` of ``[prompt | response]`` sequences: a reward model's score read at the last real
    token, or a reward function's, checked to be finite.

    Args:
        role: The reward model (adapter + head), or ``None`` with ``function``.
        function: A ``module:function`` reward, ``f(prompts, responses) -> scores``; it gets the prompts as the
            user wrote them (or the decoded prompt tokens) and the responses without special tokens.
        tokenizer: Decodes responses for a function.
        source: Names the reward in errors (the reward model's folder).
    """

    def __init__(self, role: Role | None, function: ScoreFunction | None, tokenizer, source: str) -> None:
        if (role is None) == (function is None):
            raise ValueError("a reward scorer needs exactly one of a reward model role and a reward function")
        self.role, self.function, self.tokenizer, self.source = role, function, tokenizer, source

    @torch.no_grad()
    def __call__(
        self,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_length: int,
        prompt_texts: Sequence[str] | None = None,
        when: str = "",
    ) -> torch.Tensor:
        if self.function is None:
            return require_finite(role_scores(self.role, sequences, attention_mask), f"{self.source} {when}".strip())
        prompts = (
            list(prompt_texts)
            if prompt_texts is not None
            else self.tokenizer.batch_decode(sequences[:, :prompt_length], skip_special_tokens=True)
        )
        response_mask = attention_mask[:, prompt_length:]
        ids = sequences[:, prompt_length:].masked_fill(response_mask == 0, 0)
        responses = [
            self.tokenizer.decode(row[: int(n)], skip_special_tokens=True)
            for row, n in zip(ids.tolist(), response_mask.sum(-1).tolist())
        ]
        return self.function(prompts, responses, when, sequences.device)


def penalty(scores: torch.Tensor, ended: torch.Tensor, empty: torch.Tensor, shaping: RewardShaping) -> torch.Tensor:
    """``(b,)`` the missing-EOS penalty's change to each score (to empty responses too, with
    ``rewards.penalize_empty``); see :func:`rlhf_lightning.evaluation.compare.eos_penalty`."""
    empty = empty if shaping.penalize_empty else None
    return eos_penalty(scores, ended, shaping.missing_eos_penalty, shaping.missing_eos_mode, empty)


def shape_scores(raw: torch.Tensor, ended: torch.Tensor, empty: torch.Tensor, shaping: RewardShaping) -> torch.Tensor:
    """Scores ``(b,)`` the policy is optimised on: clipped, optionally rescaled (with the statistics of all
    ranks), missing-EOS penalty applied."""
    scores = raw
    if shaping.score_clip is not None:
        scores = scores.clamp(-shaping.score_clip, shaping.score_clip)
    if shaping.whiten_scores:  # fewer than 2 scores over all ranks are left as they are
        scores = whiten(scores, torch.ones_like(scores, dtype=torch.bool), shift_mean=False, all_reduce=True)
    return scores + penalty(scores, ended, empty, shaping)


def micro_slices(n: int, size: int | None) -> list[slice]:
    """``n`` rows in slices of ``size`` (one slice when ``size`` is ``None``)."""
    size = size or n
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def make_experience(
    rollout: Rollout,
    policy: Role,
    reference: Role,
    value: Role,
    score: Callable[..., torch.Tensor],
    beta: float,
    ppo: PPOConfig,
    shaping: RewardShaping,
    temperature: float,
    chunk_size: int = 1024,
) -> tuple[Experience, RolloutStats]:
    """Score a rollout without gradients: the policy's log-probs and entropies and the reference's log-probs
    (at ``logits / temperature``, the sampling distribution), the values, the raw scores (``score`` is a
    :class:`RewardScorer`); then per-token rewards ``-beta * KL`` plus the shaped score on the last token
    (Ziegler et al. 2019; InstructGPT), GAE (Schulman et al. 2016) and optionally whitened advantages. Forward
    passes go ``ppo.micro_batch_size`` sequences at a time."""
    seq_all, mask_all = rollout.sequences, rollout.mask
    names = ("logprobs", "entropy", "ref_logprobs", "values", "raw_scores")
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for micro in micro_slices(seq_all.shape[0], ppo.micro_batch_size):
        seq, att, m = seq_all[micro], rollout.attention_mask[micro], mask_all[micro]
        with active(policy):
            out = response_logprobs(policy, seq, att, m, temperature, chunk_size, with_entropy=True)
        with active(reference):
            parts["ref_logprobs"].append(response_logprobs(reference, seq, att, m, temperature, chunk_size).logprobs)
        parts["logprobs"].append(out.logprobs)
        parts["entropy"].append(out.entropy)
        parts["values"].append(role_values(value, seq, att, m.shape[1]))
        texts = rollout.prompt_texts[micro] if rollout.prompt_texts is not None else None
        parts["raw_scores"].append(score(seq, att, rollout.prompt_length, texts))
    logprobs, entropy, ref_logprobs, values, raw = (torch.cat(parts[name]) for name in names)
    mask, ended = mask_all, rollout.ended
    values = values * mask
    scores = shape_scores(raw, ended, empty_responses(mask, ended), shaping)
    kl = kl_per_token(logprobs, ref_logprobs, shaping.kl_estimator) * mask
    shaped = token_rewards(scores, kl, mask, beta)
    advantages, returns = gae(shaped.rewards, values, mask, ppo.gamma, ppo.lam)
    if ppo.whiten_advantages:
        advantages = whiten(advantages, mask, shift_mean=True, all_reduce=True)
    experience = Experience(seq_all, rollout.attention_mask, mask, logprobs, values, advantages, returns)
    seq_kl = ((logprobs - ref_logprobs) * mask).sum(-1)  # k1 per sequence, the logged KL whatever the estimator
    non_score = shaped.non_score.sum(-1)
    responses = seq_all[:, rollout.prompt_length :]
    content = content_mask(mask, ended)
    stats = RolloutStats(
        # all ranks: the adaptive KL controller must see the same KL everywhere
        kl=masked_mean(seq_kl, torch.ones_like(seq_kl, dtype=torch.bool), all_reduce=True),
        entropy=(entropy * mask).sum(-1).mean(),
        non_score_reward=non_score.mean(),
        rlhf_reward=(scores + non_score).mean(),
        scores=scores.mean(),
        raw_scores=raw.mean(),
        kl_coef=torch.tensor(beta),
        num_eos_tokens=ended.sum().float(),
        ended_fraction=ended.float().mean(),
        response_length=mask.sum(-1).float().mean(),
        values_mean=masked_mean(values, mask),
        # what reward hacking changes first: lexical diversity over the batch's answers, the share of empty
        # answers, and how much of the raw score length alone explains
        distinct_1=distinct_n(responses, content, 1),
        distinct_2=distinct_n(responses, content, 2),
        empty_fraction=empty_fraction(mask, ended),
        score_length_corr=pearson(raw, content.sum(-1)).float(),
    )
    return experience, stats


__all__ = [
    "Experience",
    "Rollout",
    "RolloutStats",
    "RewardScorer",
    "make_experience",
    "micro_slices",
    "penalty",
    "sample",
    "shape_scores",
]
