"""Optimizer and learning-rate schedule shared by every stage."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR

from rlhf_lightning.models.optimizers import bnb_optimizer


@dataclass
class OptimConfig:
    """AdamW with warmup and decay."""

    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit"] = "adamw"
    """``adamw`` (torch), or bitsandbytes' 8-bit / paged variants, which keep optimizer state small (8-bit)
    or let it spill to CPU memory under pressure (paged, CUDA only; plain on CPU)."""
    lr: float = 2e-4
    """Peak learning rate. LoRA wants about 10x the full fine-tuning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's moving-average coefficients for the gradient and its square."""
    eps: float = 1e-8
    """Adam's denominator term."""
    warmup_steps: int = 0
    """Linear warmup from 0, in optimizer steps. Overrides ``warmup_ratio`` when > 0."""
    warmup_ratio: float = 0.03
    """Warmup as a fraction of all training steps (used when ``warmup_steps`` is 0)."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of ``lr`` (cosine and linear)."""
    max_nonfinite_steps: int = 10
    """An optimizer step whose loss or gradient norm is NaN or infinite is skipped (weights and optimizer
    state untouched) and counted in ``train/nonfinite_steps``; after more than this many in a row the run
    stops with an error (0: stop at the first). Not under ``trainer.precision: 16-mixed``: its gradient scaler
    skips such steps itself and lowers its scale, uncounted, and this limit does not apply."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.eps < 0:
            raise ValueError(f"optim.eps must be >= 0, got {self.eps}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0 (0: use warmup_ratio), got {self.warmup_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.max_nonfinite_steps < 0:
            raise ValueError(f"optim.max_nonfinite_steps must be >= 0, got {self.max_nonfinite_steps}")


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | Mapping[str, Iterable[torch.nn.Parameter]],
    cfg: OptimConfig,
    lr_scale: Mapping[str, float] | None = None,
) -> torch.optim.Optimizer:
    """The optimizer of the trainable ``params``: one parameter group, or one per named group (``{name:
    parameters}``, in that order, each with its ``name``) whose learning rate is ``cfg.lr`` times its
    ``lr_scale`` (1 when not given). A schedule (:func:`build_scheduler`) scales every group alike."""
    if isinstance(params, Mapping):
        scale = lr_scale or {}
        groups = [
            {"params": trainable, "name": name, "lr": cfg.lr * scale.get(name, 1.0)}
            for name, group in params.items()
            if (trainable := [p for p in group if p.requires_grad])
        ]
    else:
        groups = [p for p in params if p.requires_grad]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    return bnb_optimizer(cfg.optimizer, groups, **kwargs)


def lr_multiplier(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning-rate factor at optimizer step ``step`` (0-based) of ``total_steps``."""
    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else int(cfg.warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: OptimConfig) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, cfg))


def planned_optimizer_steps(trainer, steps_per_batch: int) -> int:
    """Optimizer steps a manually optimized run takes (``steps_per_batch`` per training batch): the fewer of
    ``trainer.max_steps`` and the epochs' batches times ``steps_per_batch``; the length of its schedule.
    Raises ``ValueError`` when neither limit is set."""
    limits = [trainer.max_steps] if trainer.max_steps != -1 else []
    if trainer.max_epochs not in (None, -1):
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()
        if math.isfinite(trainer.num_training_batches):
            limits.append(int(trainer.num_training_batches) * trainer.max_epochs * steps_per_batch)
    if not limits:
        raise ValueError("PPO needs trainer.max_steps or trainer.max_epochs to plan its learning-rate schedule")
    return min(limits)
