"""Lightning callbacks: checkpoints written after the validation that follows them, sample tables in TensorBoard,
throughput and peak memory, PPO's health warnings."""

from rlhf_lightning.callbacks.checkpoint import ModelCheckpoint
from rlhf_lightning.callbacks.ppo_health import PPOHealthCheck
from rlhf_lightning.callbacks.samples import GenerationSamples, SampleConfig
from rlhf_lightning.callbacks.throughput import PhaseTimer, ThroughputMonitor, peak_memory_gb

__all__ = [
    "GenerationSamples",
    "ModelCheckpoint",
    "PPOHealthCheck",
    "PhaseTimer",
    "SampleConfig",
    "ThroughputMonitor",
    "peak_memory_gb",
]
