"""The PPO stage's option groups: ``ppo`` (the update), ``rewards`` (how scores and the KL penalty become
per-token rewards) and ``evaluation``. Each group checks its own values; the messages name the option."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from lightning.pytorch.strategies import DDPStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_warn

from rlhf_lightning.evaluation.config import EvalConfig
from rlhf_lightning.models.config import LoraConfig, ModelConfig
from rlhf_lightning.models.generation import GenerationConfig
from rlhf_lightning.ops import AdaptiveKLController, FixedKLController


@dataclass
class PPOConfig:
    """The PPO update."""

    ppo_epochs: int = 4
    """Passes over each rollout batch."""
    num_minibatches: int = 1
    """Optimizer steps per pass: the rollout batch is reshuffled and split into this many minibatches."""
    micro_batch_size: int | None = None
    """Sequences per forward/backward pass (gradients accumulate within a minibatch); bounds memory. Also
    used for the scoring forward passes. ``null``: a whole minibatch at once."""
    clip_eps: float = 0.2
    """Policy ratio clipping ``[1 - eps, 1 + eps]``."""
    value_clip: float = 0.2
    """Values are clipped to within this distance of the rollout's values."""
    value_lr_scale: float = 1.0
    """Learning rate of the value function (its adapter or own model, and its head) as a multiple of
    ``optim.lr``; the schedule scales it with the policy's. The policy's and the value's losses reach disjoint
    parameters, so this, not a weight on the value loss, sets how fast the value function moves."""
    vf_coef: float | None = None
    """Deprecated alias of ``value_lr_scale`` (with a warning). It was a weight on the value loss, which did
    not set how fast the value function learns: that loss reaches only the value's parameters, and Adam undoes
    a constant gradient scale (the weight moved only the point where the value's gradient clipping binds)."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (0 = off)."""
    gamma: float = 1.0
    """Discount over response tokens."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_advantages: bool = True
    """Normalise advantages over the valid tokens of the batch (all ranks)."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm before each optimizer step, the policy's and the value function's separately
    (``null``: off). Use this, not ``trainer.gradient_clip_val``, which Lightning refuses under manual
    optimization. With Adam it damps only the steps whose gradient is large next to the others': a norm below
    every step's gives about the same updates as any other such norm (Adam undoes a constant scale); for smaller steps
    lower ``optim.lr``."""

    def __post_init__(self) -> None:
        for name in ("ppo_epochs", "num_minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"ppo.{name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"ppo.micro_batch_size must be >= 1 (or null), got {self.micro_batch_size}")
        for name in ("clip_eps", "value_clip"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ppo.{name} must be > 0, got {getattr(self, name)}")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ppo.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.vf_coef is not None:
            if self.value_lr_scale != 1.0:
                raise ValueError("give ppo.value_lr_scale alone: ppo.vf_coef is its deprecated alias")
            rank_zero_warn(
                "ppo.vf_coef is deprecated: as a value-loss weight it did not set how fast the value function learns "
                "(that loss reaches only the value's parameters, and Adam undoes a constant gradient scale); it now "
                f"sets ppo.value_lr_scale: the value function trains at {self.vf_coef} x optim.lr",
                category=FutureWarning,
            )
            self.value_lr_scale, self.vf_coef = self.vf_coef, None
        if self.value_lr_scale <= 0:
            raise ValueError(f"ppo.value_lr_scale must be > 0, got {self.value_lr_scale}")
        if self.entropy_coef < 0:
            raise ValueError(f"ppo.entropy_coef must be >= 0, got {self.entropy_coef}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"ppo.max_grad_norm must be > 0 (or null), got {self.max_grad_norm}")


@dataclass
class RewardShaping:
    """How the reward model's score and the KL penalty become per-token rewards."""

    kl_coef: float = 0.05
    """``beta``: weight of the KL penalty (initial value if adaptive)."""
    kl_penalty: Literal["reward", "loss"] = "reward"
    """Where the KL penalty goes. ``reward``: ``-beta * kl_t`` on every response token's reward (InstructGPT);
    through the returns each token is also charged the KL of the tokens after it, so with ``k1`` the policy
    gradient is that of the sequence KL(policy || reference). ``loss``: ``beta`` times the token mean of
    ``(p / p_old) * kl_t`` is added to the policy loss (as in GRPO, with the ratio); its gradient is exactly that
    of each token's KL to the reference given the tokens before it, with ``k1`` or ``k3``, but it ignores a
    token's effect on the KL of later tokens, and ``beta`` then weighs a per-token mean against whitened
    advantages (not comparable with ``reward``'s ``beta``)."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """Per-token KL estimate from the sampled token: ``k1 = log p - log q`` or ``k3 = (q/p - 1) - log(q/p)``
    (always >= 0, lower variance), ``p`` the policy and ``q`` the reference. Both have the KL as their
    expected value, but only ``k1`` in the rewards gives the KL's gradient: ``k3`` in the rewards pulls the
    policy towards ``E[grad log p * k3]``, which is not it (a warning says so). With ``kl_penalty: loss`` both
    give the exact per-token gradient."""
    adaptive_kl: bool = False
    """Adapt ``beta`` so that the KL tracks ``kl_target`` (Ziegler et al. 2019)."""
    kl_target: float = 6.0
    """Target sequence KL (nats) for the adaptive controller."""
    kl_horizon: int = 10000
    """Horizon (responses) of the adaptive controller."""
    missing_eos_penalty: float | None = 1.0
    """Penalty for a response that did not end (no EOS within ``max_new_tokens``); ``null`` disables it."""
    missing_eos_mode: Literal["subtract", "replace"] = "subtract"
    """``subtract`` the penalty from the score, or ``replace`` the score with ``-missing_eos_penalty``."""
    penalize_empty: bool = True
    """An empty response (a stop token first) gets the missing-EOS penalty too: a reward model rarely saw an
    empty answer, and may score it above real ones. Sampling is left alone (no forced minimum length, which
    would bias the KL); ``false`` scores empty answers as the reward model does."""
    score_clip: float | None = None
    """Clip scores to ``[-score_clip, score_clip]`` (``null``: off)."""
    whiten_scores: bool = False
    """Divide the scores of each batch by their standard deviation (mean kept)."""

    def __post_init__(self) -> None:
        if self.kl_coef < 0:
            raise ValueError(f"rewards.kl_coef must be >= 0, got {self.kl_coef}")
        if self.adaptive_kl and (self.kl_target <= 0 or self.kl_horizon < 1):
            raise ValueError(
                f"rewards.kl_target must be > 0 and rewards.kl_horizon >= 1, got {self.kl_target}, {self.kl_horizon}"
            )
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            raise ValueError(f"rewards.missing_eos_penalty must be >= 0 (or null: off), got {self.missing_eos_penalty}")
        if self.score_clip is not None and self.score_clip <= 0:
            raise ValueError(f"rewards.score_clip must be > 0 (or null), got {self.score_clip}")
        if self.kl_estimator == "k3" and self.kl_penalty == "reward" and self.kl_coef > 0:
            rank_zero_warn(
                "rewards.kl_estimator: k3 in the rewards gives a biased gradient of KL(policy || reference) (its "
                "value is unbiased, its gradient is not); use k1, or rewards.kl_penalty: loss"
            )

    def kl_controller(self) -> FixedKLController:
        """The controller of ``beta``: fixed, or adaptive towards ``kl_target``."""
        if self.adaptive_kl:
            return AdaptiveKLController(self.kl_coef, self.kl_target, self.kl_horizon)
        return FixedKLController(self.kl_coef)


@dataclass(kw_only=True)
class PPOEvalConfig(EvalConfig):
    """Evaluation on the held-out prompts: the policy against the reference, both judged by the reward; and
    the sample table."""

    temperature: float | None = None
    """Sampling temperature of evaluation responses and of the sample table (0: greedy); their KL is measured
    at this temperature too. ``null`` uses the rollout's."""
    seed: int = 0
    """Seed of the evaluation's and the sample table's own random generator (batch ``i`` of the evaluation
    draws from ``seed + i``, for each side); they never touch the training run's random state."""
    num_samples: int = 4
    """Rows of the sample table, and of the evaluation's side-by-side table."""

    at_end: bool = True
    """Evaluate at the end of training; results go to TensorBoard (``eval/*``) and ``evaluation.json``.
    ``rlhf-lightning validate`` (and ``trainer.val_check_interval``) run the same evaluation on demand."""
    samples_every_n_iterations: int = 10
    """Every N iterations log a table of eval prompts with the policy's response, score and KL (0 = off)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples_every_n_iterations < 0:
            raise ValueError(
                f"evaluation.samples_every_n_iterations must be >= 0 (0: off), got {self.samples_every_n_iterations}"
            )


def check_options(
    model: ModelConfig,
    lora: LoraConfig,
    rollout: GenerationConfig,
    reward_model: str | None,
    reward_function: str | None,
    separate_value: bool,
) -> ModelConfig:
    """Refuse what PPO cannot train with (``ValueError`` naming the option); warn about what biases it or is
    ignored. Returns ``model`` with dropout off, whatever it (or ``lora.dropout``) said."""
    if (reward_model is None) == (reward_function is None):
        raise ValueError("give exactly one of reward_model (a reward run's final folder) and reward_function")
    if separate_value and reward_model is None:
        raise ValueError("separate_value needs a reward_model to start the value function from")
    if not lora.enabled:
        raise ValueError("PPO trains LoRA adapters on a shared base model: lora.enabled must be true")
    if rollout.temperature <= 0:
        raise ValueError("rollout.temperature must be > 0: PPO needs sampled responses")
    if rollout.top_k != 0 or rollout.top_p < 1.0:
        rank_zero_warn("rollout top_k/top_p truncate the sampling distribution: the measured KL becomes biased")
    if not model.disable_dropout:
        rank_zero_warn("PPO turns every dropout off (model.disable_dropout: false is ignored)")
    if lora.dropout > 0:
        rank_zero_warn(f"PPO turns every dropout off (lora.dropout: {lora.dropout} is ignored)")
    return dataclasses.replace(model, disable_dropout=True)


def check_strategy(strategy: Strategy) -> None:
    """PPO under DDP needs unused parameters allowed: each backward pass reaches one role's adapter only."""
    if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters", False):
        raise ValueError(
            "PPO under DDP needs --trainer.strategy=ddp_find_unused_parameters_true: each backward pass "
            "reaches only the policy's or only the value's adapter, and DDP must be told the rest is unused"
        )
