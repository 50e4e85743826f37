"""bitsandbytes' optimizers, named as ``optim.optimizer`` names them. bitsandbytes is imported when one is
built, so that runs with torch's AdamW (and commands that train nothing) never load it."""

from __future__ import annotations

import torch

BNB_OPTIMIZERS = {"adamw_8bit": "AdamW8bit", "paged_adamw": "PagedAdamW", "paged_adamw_8bit": "PagedAdamW8bit"}


def bnb_optimizer(name: str, params: list[torch.nn.Parameter], **kwargs) -> torch.optim.Optimizer:
    """The bitsandbytes optimizer ``name`` (a key of :data:`BNB_OPTIMIZERS`) over ``params``."""
    import bitsandbytes as bnb

    return getattr(bnb.optim, BNB_OPTIMIZERS[name])(params, **kwargs)
