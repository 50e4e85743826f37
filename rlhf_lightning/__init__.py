"""rlhf_lightning: Reinforcement Learning from Human Feedback on PyTorch Lightning."""

from rlhf_lightning.data import ComparisonsDataModule, DemonstrationsDataModule, PromptsDataModule
from rlhf_lightning.modules import PPOModule, RewardModule, SFTModule

__version__ = "0.1.0"
__all__ = [
    "ComparisonsDataModule",
    "DemonstrationsDataModule",
    "PPOModule",
    "PromptsDataModule",
    "RewardModule",
    "SFTModule",
    "__version__",
]
