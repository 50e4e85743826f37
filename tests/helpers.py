"""Running the CLI in-process and reading what it logged."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class StopAfterStep(L.Callback):
    """Simulates a crash: raises once ``stop_at`` optimizer steps have been taken (and checkpointed)."""

    def __init__(self, stop_at: int) -> None:
        self.stop_at = stop_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.stop_at:
            raise RuntimeError(f"simulated crash at step {trainer.global_step}")


def run_cli(args: list[str]):
    from rlhf_lightning.cli import RLHFLightningCLI

    return RLHFLightningCLI(args=args)


def scalars(run_dir: str | Path, tag: str) -> dict[int, float]:
    """``{step: value}`` of a scalar in a run folder's TensorBoard events (later writes win)."""
    from rlhf_lightning.runs import read_scalars

    return read_scalars(run_dir, tag)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
