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


class PhaseTimer(L.Callback):
    """Wall time, peak memory and throughput of the named phases of each training step (PPO: rollout, scoring,
    training), as ``perf/{phase}_sec``, ``perf/peak_memory_gb_{phase}`` and, for a phase whose tokens were
    counted, ``perf/{phase}_tokens_per_sec`` (:meth:`metrics`, which the module logs with its step's other
    statistics). The module times a phase with ``with timer.phase(name, device):`` and counts its tokens with
    :meth:`count`; the callback starts every training step empty.

    On a GPU the allocator's peak is reset at the start of each phase, so each phase reports its own peak.
    On CPU the figure is the process's peak resident set size so far (it cannot be reset).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_gb: dict[str, float] = {}
        self.tokens: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str, device: torch.device) -> Iterator[None]:
        sync = torch.cuda.synchronize if device.type == "cuda" else lambda _: None
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            sync(device)
            self.seconds[name] = time.perf_counter() - start
            self.peak_gb[name] = peak_memory_gb(device)

    def count(self, name: str, tokens: float) -> None:
        """``tokens`` processed in phase ``name`` this step (all devices together)."""
        self.tokens[name] = tokens

    def metrics(self) -> dict[str, float]:
        out = {}
        for name, seconds in self.seconds.items():
            out[f"perf/{name}_sec"] = seconds
            out[f"perf/peak_memory_gb_{name}"] = self.peak_gb[name]
            if name in self.tokens:
                out[f"perf/{name}_tokens_per_sec"] = self.tokens[name] / max(seconds, 1e-9)
        return out

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seconds, self.peak_gb, self.tokens = {}, {}, {}
