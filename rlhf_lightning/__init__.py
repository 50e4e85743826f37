"""rlhf_lightning: Reinforcement Learning from Human Feedback on PyTorch Lightning."""

from rlhf_lightning.data import DemonstrationsDataModule
from rlhf_lightning.modules import SFTModule

__version__ = "0.1.0"
__all__ = ["DemonstrationsDataModule", "SFTModule", "__version__"]
