"""Tokens per second and peak memory of the training phase, logged every step."""

from __future__ import annotations

import resource
import sys
import time

import lightning as L
import torch


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA allocator peak on a GPU, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**30 if sys.platform == "darwin" else maxrss / 2**20  # bytes on macOS, KiB on Linux


class ThroughputMonitor(L.Callback):
    """Logs ``perf/train_tokens_per_sec`` (real tokens, padding excluded, all devices together),
    ``perf/train_step_sec`` and ``perf/peak_memory_gb``."""

    def __init__(self, tokens_key: str = "attention_mask") -> None:
        self.tokens_key = tokens_key
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        elapsed = time.perf_counter() - self._start
        tokens = batch[self.tokens_key].sum().item() * trainer.world_size
        pl_module.log_dict(
            {
                "perf/train_tokens_per_sec": tokens / max(elapsed, 1e-9),
                "perf/train_step_sec": elapsed,
                "perf/peak_memory_gb": peak_memory_gb(pl_module.device),
            },
            on_step=True,
            on_epoch=False,
        )
