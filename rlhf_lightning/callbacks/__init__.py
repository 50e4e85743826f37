"""Lightning callbacks: sample tables in TensorBoard, throughput and peak memory."""

from rlhf_lightning.callbacks.samples import GenerationSamples, SampleConfig
from rlhf_lightning.callbacks.throughput import ThroughputMonitor, peak_memory_gb

__all__ = ["GenerationSamples", "SampleConfig", "ThroughputMonitor", "peak_memory_gb"]
