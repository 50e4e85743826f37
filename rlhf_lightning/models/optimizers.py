"""bitsandbytes' optimizers, named as ``optim.optimizer`` names them (the only importer of bitsandbytes)."""

from __future__ import annotations

import bitsandbytes as bnb
import torch

BNB_OPTIMIZERS = {
    "adamw_8bit": bnb.optim.AdamW8bit,
    "paged_adamw": bnb.optim.PagedAdamW,
    "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
}


def bnb_optimizer(name: str, params: list[torch.nn.Parameter], **kwargs) -> torch.optim.Optimizer:
    """The bitsandbytes optimizer ``name`` (a key of :data:`BNB_OPTIMIZERS`) over ``params``."""
    return BNB_OPTIMIZERS[name](params, **kwargs)
