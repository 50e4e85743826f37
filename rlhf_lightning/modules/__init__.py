"""The LightningModules of the three stages."""

from rlhf_lightning.modules.base import CausalLMModule
from rlhf_lightning.modules.optim import OptimConfig
from rlhf_lightning.modules.ppo import PPOModule
from rlhf_lightning.modules.reward import RewardModule
from rlhf_lightning.modules.sft import SFTModule

__all__ = ["CausalLMModule", "OptimConfig", "PPOModule", "RewardModule", "SFTModule"]
