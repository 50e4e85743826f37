"""Lightning callbacks: sample tables in TensorBoard, throughput and peak memory."""

from rlhf_lightning.callbacks.samples import GenerationSamples, SampleConfig, markdown_table
from rlhf_lightning.callbacks.throughput import PhaseTimer, ThroughputMonitor, peak_memory_gb

__all__ = ["GenerationSamples", "PhaseTimer", "SampleConfig", "ThroughputMonitor", "markdown_table", "peak_memory_gb"]
