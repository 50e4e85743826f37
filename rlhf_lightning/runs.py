"""What a run folder holds besides checkpoints and the model in ``final``: TensorBoard event files, the
prompts a PPO run held out for evaluation, a reward run's degenerate-answer check."""

from __future__ import annotations

from pathlib import Path

HELDOUT_FILE = "heldout_prompts.jsonl"
"""A PPO run folder's record of its evaluation prompts (a prompts file; each row names its ``origin``)."""
DEGENERATE_FILE = "degenerate_check.json"
"""In a reward run's ``final`` folder: how degenerate answers to held-out prompts scored after training."""


def read_scalars(run_dir: str | Path, tag: str) -> dict[int, float]:
    """``{step: value}`` of one scalar over every event file in ``run_dir`` (a resumed run adds files; for a
    step logged twice the later file wins). Empty when the tag was never logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for events in sorted(Path(run_dir).glob("events.out.tfevents.*")):  # names start with creation time
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return dict(sorted(values.items()))
