"""Phase timing: each phase's seconds and tokens per second, reset at every step."""

import time

import torch

from rlhf_lightning.callbacks import PhaseTimer


def test_each_phase_reports_its_time_and_throughput_and_a_new_step_starts_empty():
    timer = PhaseTimer()
    cpu = torch.device("cpu")
    with timer.phase("rollout", cpu):
        time.sleep(0.05)
    with timer.phase("training", cpu):
        pass
    timer.count("rollout", 100)
    metrics = timer.metrics()
    assert metrics["perf/rollout_sec"] >= 0.05 and metrics["perf/training_sec"] < metrics["perf/rollout_sec"]
    assert metrics["perf/rollout_tokens_per_sec"] == 100 / metrics["perf/rollout_sec"]
    assert "perf/training_tokens_per_sec" not in metrics  # nothing counted for it
    assert metrics["perf/peak_memory_gb_rollout"] > 0
    timer.on_train_batch_start(None, None, None, 0)
    assert timer.metrics() == {}
