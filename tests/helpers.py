"""Running the CLI in-process, reading what it logged, and making run folders to start later stages from."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from rlhf_lightning.models import LoraConfig, ModelConfig, load_causal_lm, load_tokenizer
from rlhf_lightning.models.reward import ScalarHead, save_head
from rlhf_lightning.models.run_folder import RunFolder, RunInfo

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""


class StopAfterStep(L.Callback):
    """Simulates a crash: raises once ``stop_at`` optimizer steps have been taken (and checkpointed)."""

    def __init__(self, stop_at: int) -> None:
        self.stop_at = stop_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.stop_at:
            raise RuntimeError(f"simulated crash at step {trainer.global_step}")


class KillAfterStep(StopAfterStep):
    """Simulates a hard kill (SIGKILL: no exception handler, no teardown) once ``stop_at`` steps are done."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.stop_at:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def run_cli(args: list[str]):
    from rlhf_lightning.cli import RLHFLightningCLI

    return RLHFLightningCLI(args=args)


def scalars(run_dir: str | Path, tag: str) -> dict[int, float]:
    """``{step: value}`` of a scalar in a run folder's TensorBoard events (later writes win)."""
    from rlhf_lightning.evaluation.report import read_scalars

    return read_scalars(run_dir, tag)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def make_run_folder(
    base: str,
    folder: Path,
    stage: str,
    seed: int,
    dropout: float = 0.0,
    lora: LoraConfig | None = None,
    chat_template: str = "never",
    std: float = 0.3,
) -> Path:
    """A run's ``final`` folder with a LoRA adapter whose weights are random (LoRA B drawn with ``std``, not the
    zero-B init; every ``modules_to_save`` copy moved by noise of that ``std``), so that the adapter changes the
    model's outputs (``std=0`` keeps it a no-op); a reward folder also gets a score head. ``lora`` defaults to
    rank 4 with the saved ``lora_dropout`` ``dropout``; ``chat_template`` is what the run info records."""
    torch.manual_seed(seed)
    model = load_causal_lm(ModelConfig(name_or_path=base), lora or LoraConfig(r=4, alpha=8, dropout=dropout))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=std)
            elif "modules_to_save" in name:
                p.add_(torch.randn_like(p) * std)
    model.save_pretrained(folder)
    load_tokenizer(base).save_pretrained(folder)
    if stage == "reward":
        head = ScalarHead(model.config.hidden_size)
        with torch.no_grad():
            head.linear.bias.fill_(0.5)
        save_head(head, folder)
    RunFolder.write_info(folder, RunInfo(stage=stage, base_model=base, adapter=True, chat_template=chat_template))
    return folder
