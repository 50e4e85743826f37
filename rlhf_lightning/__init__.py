"""rlhf_lightning: Reinforcement Learning from Human Feedback on PyTorch Lightning."""

from rlhf_lightning.data import ComparisonsDataModule, DemonstrationsDataModule
from rlhf_lightning.modules import RewardModule, SFTModule

__version__ = "0.1.0"
__all__ = ["ComparisonsDataModule", "DemonstrationsDataModule", "RewardModule", "SFTModule", "__version__"]
