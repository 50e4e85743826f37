"""Tokens per second and peak memory of the training phase, logged every step."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

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


class PhaseTimer:
    """Wall time and peak memory of the named phases of one step (PPO: rollout, scoring, training).

    On a GPU the allocator's peak is reset at the start of each phase, so each phase reports its own peak.
    On CPU the figure is the process's peak resident set size so far (it cannot be reset).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.peak_gb: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = time.perf_counter() - start
            self.peak_gb[name] = peak_memory_gb(self.device)
