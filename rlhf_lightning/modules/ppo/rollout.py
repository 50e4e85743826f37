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
from rlhf_lightning.models.adapters import (
    Role,
    active,
    response_logprobs,
    response_values,
    role_hidden_states,
    role_scores,
    sample_from_role,
)
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
    nonpad_columns,
    pearson,
    standard_error,
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
    ref_logprobs: torch.Tensor  # the reference's, for the KL penalty as a loss term (rewards.kl_penalty: loss)


class RolloutStats(NamedTuple):
    """Per-iteration statistics of a rollout (0-d tensors), logged under TRL's names (:data:`ROLLOUT_TAGS`)."""

    kl: torch.Tensor
    """Mean summed k1 KL of a response to the reference, nats (all ranks, whatever the estimator)."""
    kl_stderr: torch.Tensor
    """Standard error of ``kl`` (sample standard deviation of the responses' KL over the square root of their
    number, all ranks; ``inf`` with one response): how far below 0 sampling noise alone takes ``kl``."""
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
    "kl_stderr": "objective/kl_stderr",
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


class MicroBatch(NamedTuple):
    """Some rows of ``[prompt (p) | response (r)]`` sequences, trimmed of the columns that are padding in all
    of them: ``sequences (m, p' + r')``, ``mask (m, r')``; ``r' <= r`` and the response still starts at column
    ``p'``. :meth:`place` puts an ``(m, r')`` result back into the batch's ``(b, r)`` layout."""

    rows: torch.Tensor
    sequences: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor
    prompt_length: int

    @property
    def response_length(self) -> int:
        return self.mask.shape[1]

    def place(self, out: torch.Tensor, part: torch.Tensor) -> None:
        out[self.rows, : part.shape[1]] = part.to(out.dtype)

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """The rows and response columns of a ``(b, r)`` tensor of the batch."""
        return full[self.rows, : self.response_length]


def micro_batches(
    sequences: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, size: int | None
) -> list[MicroBatch]:
    """``rows`` of a ``[prompt | response]`` batch in micro-batches of ``size`` (``None``: one): sorted by
    length first when there are several, so rows of similar length share a forward pass, and each trimmed of
    the columns that are padding in all its rows (:func:`~rlhf_lightning.ops.nonpad_columns`). Positions come
    from the attention mask, so trimming changes no result."""
    p = sequences.shape[1] - mask.shape[1]
    if size is not None and size < len(rows):
        rows = rows[attention_mask[rows].sum(-1).argsort(stable=True)]
    out = []
    for micro in micro_slices(len(rows), size):
        index = rows[micro]
        att = attention_mask[index]
        cols = nonpad_columns(att)
        # keep the last prompt column: its hidden state predicts the first response token
        first, last = min(cols.start, p - 1), max(cols.stop, p + 1)
        out.append(
            MicroBatch(index, sequences[index, first:last], att[:, first:last], mask[index, : last - p], p - first)
        )
    return out


class FrozenPasses(NamedTuple):
    """What the frozen roles say about a rollout, ``(b, r)`` unless noted."""

    ref_logprobs: torch.Tensor
    values: torch.Tensor
    raw_scores: torch.Tensor
    """``(b,)``."""


@torch.no_grad()
def frozen_passes(
    rollout: Rollout,
    reference: Role,
    value: Role,
    score: Callable[..., torch.Tensor],
    temperature: float,
    micro_batch_size: int | None,
    chunk_size: int = 1024,
) -> FrozenPasses:
    """The reference's log-probs (at ``logits / temperature``), the values and the raw scores (``score`` is
    a :class:`RewardScorer`) of a rollout, without gradients: role by role, so each adapter is switched to
    once per rollout, then micro-batch by micro-batch (:func:`micro_batches`)."""
    b, r = rollout.mask.shape
    micros = micro_batches(
        rollout.sequences, rollout.attention_mask, rollout.mask, torch.arange(b, device=rollout.mask.device),
        micro_batch_size,
    )  # fmt: skip
    ref_logprobs, values = (rollout.mask.new_zeros((b, r), dtype=torch.float32) for _ in range(2))
    raw = rollout.mask.new_zeros(b, dtype=torch.float32)
    with active(reference):
        for mb in micros:
            out = response_logprobs(reference, mb.sequences, mb.attention_mask, mb.mask, temperature, chunk_size)
            mb.place(ref_logprobs, out.logprobs)
    with active(value):
        for mb in micros:
            hidden = role_hidden_states(value, mb.sequences, mb.attention_mask)
            mb.place(values, response_values(value.head, hidden, mb.response_length))
    for mb in micros:
        texts = [rollout.prompt_texts[i] for i in mb.rows.tolist()] if rollout.prompt_texts is not None else None
        raw[mb.rows] = score(mb.sequences, mb.attention_mask, mb.prompt_length, texts).float()
    return FrozenPasses(ref_logprobs, values, raw)


@torch.no_grad()
def policy_logprobs(
    rollout: Rollout, policy: Role, temperature: float, micro_batch_size: int | None, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy's log-probs and entropies ``(b, r)`` of its own rollout, without gradients (the old
    log-probs when the update cannot take them from its first pass)."""
    b, r = rollout.mask.shape
    logprobs = rollout.mask.new_zeros((b, r), dtype=torch.float32)
    entropy = torch.zeros_like(logprobs)
    micros = micro_batches(
        rollout.sequences, rollout.attention_mask, rollout.mask, torch.arange(b, device=rollout.mask.device),
        micro_batch_size,
    )  # fmt: skip
    with active(policy):
        for mb in micros:
            out = response_logprobs(
                policy, mb.sequences, mb.attention_mask, mb.mask, temperature, chunk_size, with_entropy=True
            )
            mb.place(logprobs, out.logprobs)
            mb.place(entropy, out.entropy)
    return logprobs, entropy


def build_experience(
    rollout: Rollout,
    frozen: FrozenPasses,
    logprobs: torch.Tensor,
    entropy: torch.Tensor,
    beta: float,
    ppo: PPOConfig,
    shaping: RewardShaping,
) -> tuple[Experience, RolloutStats]:
    """Per-token rewards ``-beta * KL`` plus the shaped score on the last token (Ziegler et al. 2019;
    InstructGPT; with ``shaping.kl_penalty: loss`` the score alone, the update adds the KL to the loss), GAE
    (Schulman et al. 2016) and optionally whitened advantages, from the policy's old log-probs and entropies
    ``(b, r)`` (no gradient) and the frozen roles' passes. The logged non-score reward is ``-beta * KL``
    wherever the penalty goes."""
    logprobs, entropy = logprobs.detach(), entropy.detach()
    ref_logprobs, raw = frozen.ref_logprobs, frozen.raw_scores
    seq_all, mask, ended = rollout.sequences, rollout.mask, rollout.ended
    values = frozen.values * mask
    scores = shape_scores(raw, ended, empty_responses(mask, ended), shaping)
    kl = kl_per_token(logprobs, ref_logprobs, shaping.kl_estimator) * mask
    shaped = token_rewards(scores, kl, mask, beta)
    rewards = shaped.rewards if shaping.kl_penalty == "reward" else token_rewards(scores, kl, mask, 0.0).rewards
    advantages, returns = gae(rewards, values, mask, ppo.gamma, ppo.lam)
    if ppo.whiten_advantages:
        advantages = whiten(advantages, mask, shift_mean=True, all_reduce=True)
    experience = Experience(seq_all, rollout.attention_mask, mask, logprobs, values, advantages, returns, ref_logprobs)
    seq_kl = ((logprobs - ref_logprobs) * mask).sum(-1)  # k1 per sequence, the logged KL whatever the estimator
    non_score = shaped.non_score.sum(-1)
    responses = seq_all[:, rollout.prompt_length :]
    content = content_mask(mask, ended)
    every = torch.ones_like(seq_kl, dtype=torch.bool)
    stats = RolloutStats(
        # all ranks: the adaptive KL controller must see the same KL everywhere
        kl=masked_mean(seq_kl, every, all_reduce=True),
        kl_stderr=standard_error(seq_kl, every, all_reduce=True),
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
    """Score a rollout without gradients: the policy's log-probs and entropies (:func:`policy_logprobs`), the
    frozen roles' passes (:func:`frozen_passes`), then :func:`build_experience`. Forward passes go
    ``ppo.micro_batch_size`` sequences at a time."""
    frozen = frozen_passes(rollout, reference, value, score, temperature, ppo.micro_batch_size, chunk_size)
    logprobs, entropy = policy_logprobs(rollout, policy, temperature, ppo.micro_batch_size, chunk_size)
    return build_experience(rollout, frozen, logprobs, entropy, beta, ppo, shaping)


__all__ = [
    "Experience",
    "FrozenPasses",
    "MicroBatch",
    "Rollout",
    "RolloutStats",
    "RewardScorer",
    "build_experience",
    "frozen_passes",
    "make_experience",
    "micro_batches",
    "micro_slices",
    "penalty",
    "policy_logprobs",
    "sample",
    "shape_scores",
]
