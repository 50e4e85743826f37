"""The settings of a comparison of two policies, shared by the PPO stage's ``evaluation`` group, the
``rlhf-lightning evaluate`` command (``--evaluation.*``) and the pipeline's ``evaluation`` step. Attribute
docstrings show in ``--help``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    """How a policy is compared with its baseline on held-out prompts (see
    :mod:`rlhf_lightning.evaluation.compare` for the definition)."""

    temperature: float | None = None
    """Sampling temperature of both sides (0: greedy); their KL is measured at this temperature too. ``null``:
    the PPO stage's rollout temperature (``evaluate``: 0.7)."""
    seed: int = 0
    """Seed of the comparison's own random generator: batch ``i`` draws from ``seed + i``, for each side (common
    random numbers); a training run's random state is never touched."""
    num_samples: int = 4
    """Rows of the side-by-side sample table."""
    gold_function: str | None = None
    """Optional ``module:function`` computing a known "true" preference, ``f(prompts, responses) -> scores``
    (texts without special tokens, prompts as the reward function gets them); the comparison then also reports
    the gold score and gold win rate."""

    def __post_init__(self) -> None:
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"evaluation.temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.num_samples < 0:
            raise ValueError(f"evaluation.num_samples must be >= 0, got {self.num_samples}")
