"""Stage 3, PPO: read :mod:`~rlhf_lightning.modules.ppo.module` first (the iteration in five steps), then
:mod:`~.rollout` (responses to an :class:`~.rollout.Experience`) and :mod:`~.update` (the clipped epochs).
:mod:`~.roles` loads the four roles on one base; :mod:`~.config` holds the option groups; :mod:`~.evaluation`
the held-out evaluation."""

from rlhf_lightning.modules.ppo.config import PPOConfig, PPOEvalConfig, RewardShaping
from rlhf_lightning.modules.ppo.module import PPOModule
from rlhf_lightning.modules.ppo.rollout import Experience, Rollout, RolloutStats
from rlhf_lightning.modules.ppo.update import UpdateStats

EvalConfig = PPOEvalConfig
"""The PPO stage's ``evaluation`` group, by the name checkpoints written before ``PPOEvalConfig`` pickled."""

__all__ = [
    "EvalConfig",
    "Experience",
    "PPOConfig",
    "PPOEvalConfig",
    "PPOModule",
    "RewardShaping",
    "Rollout",
    "RolloutStats",
    "UpdateStats",
]
