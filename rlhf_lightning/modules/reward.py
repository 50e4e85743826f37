"""Stage 2: a reward model learned from human comparisons and rankings."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

from rlhf_lightning.callbacks import ThroughputMonitor
from rlhf_lightning.data.formats import RowLocation, scored_sequence
from rlhf_lightning.data.readers import describe, read_rows
from rlhf_lightning.models import LoraConfig, ModelConfig
from rlhf_lightning.models.reward import ScalarHead, hidden_size_of, save_head, score_sequences, sequence_scores
from rlhf_lightning.modules.base import CausalLMModule
from rlhf_lightning.modules.metrics import PreferenceMetrics
from rlhf_lightning.modules.optim import OptimConfig
from rlhf_lightning.ops import preference_loss
from rlhf_lightning.scores import require_finite


class RewardModule(CausalLMModule):
    """A causal LM backbone (LoRA, optionally 4-bit) plus a scalar score head, trained with the
    Bradley-Terry loss ``-log sigmoid(r_better - r_worse - margin)`` averaged within each prompt.

    Start the backbone from the SFT stage's adapter with ``model.adapter: runs/sft/final``. Logged on
    train and validation: ``accuracy``, ``margin``, ``chosen_mean/std``, ``rejected_mean/std`` and the loss;
    ``val/accuracy`` is the natural checkpoint monitor.

    Args:
        model: Which model to load and how; ``adapter`` is the SFT adapter to start from.
        lora: LoRA adapters for the backbone (the head is always trained in full).
        optim: Optimizer and learning-rate schedule.
        center_coef: Reward centering ``c * (r_better + r_worse)^2`` per pair (0 = off; 0.01 is typical):
            keeps scores near 0 without changing their order.
        calibration_files: Reference responses (demonstrations in any accepted format). After training, the
            head's bias is shifted so that their mean score is 0 (InstructGPT's normalisation).
        calibration_batch_size: Sequences per forward pass during calibration.
    """

    stage = "reward"

    def __init__(
        self,
        model: ModelConfig = ModelConfig(),  # noqa: B008 - dataclass defaults show every field in --help
        lora: LoraConfig = LoraConfig(),  # noqa: B008
        optim: OptimConfig = OptimConfig(lr=1e-4),  # noqa: B008
        center_coef: float = 0.0,
        calibration_files: list[str] | None = None,
        calibration_batch_size: int = 16,
    ) -> None:
        super().__init__(model, lora, optim)
        self.center_coef = center_coef
        self.calibration_files = list(calibration_files or [])
        self.calibration_batch_size = calibration_batch_size
        self.score_head: ScalarHead | None = None
        self.calibration_shift = 0.0
        self.calibration_sequences: list[list[int]] = []
        self.train_metrics = PreferenceMetrics()
        self.val_metrics = PreferenceMetrics()
        self.save_hyperparameters()

    def configure_heads(self) -> None:
        self.score_head = ScalarHead(hidden_size_of(self.model)).to(self._target_device())

    def configure_callbacks(self) -> list:
        return [ThroughputMonitor()]

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return sequence_scores(self.model, self.score_head, input_ids, attention_mask)

    def _step(self, batch: dict[str, torch.Tensor], metrics: PreferenceMetrics):
        scores = self.scores(batch["input_ids"], batch["attention_mask"])
        out = preference_loss(
            scores, batch["better"], batch["worse"], batch["group"], batch["margin"], self.center_coef
        )
        metrics.update(scores, batch["better"], batch["worse"], batch["group"])
        return out.loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, self.train_metrics)
        stats = {f"train/{k}": v for k, v in self.train_metrics.compute().items()}
        self.train_metrics.reset()  # per-step values; validation accumulates over the whole set
        n = int(batch["group"].max()) + 1
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict(stats, batch_size=n)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self._step(batch, self.val_metrics)
        self.log("val/loss", loss, batch_size=int(batch["group"].max()) + 1, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        stats = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log("val/accuracy", stats.pop("accuracy"), prog_bar=True)
        self.log_dict({f"val/{k}": v for k, v in stats.items()})

    # --- calibration and saving ----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Read and check the calibration files before any weight is loaded, so that a bad row in them stops
        the run now rather than after training."""
        if self.calibration_files and not self.calibration_sequences:
            self.calibration_sequences = self.read_calibration_sequences()

    def read_calibration_sequences(self) -> list[list[int]]:
        """Prompt + response ids of every calibration row, each ending at its EOS (the scored position)."""
        sequences = []
        for source in self.calibration_files:
            name = describe(source)
            for row_number, row in read_rows(source):
                sequences.append(scored_sequence(row, self.tokenizer, RowLocation(name, row_number)))
        if not sequences:
            raise ValueError(f"calibration_files {self.calibration_files} hold no rows")
        return sequences

    @torch.no_grad()
    def reference_mean_score(self) -> float:
        """Mean score of the calibration responses (each prompt + response, ending at its EOS)."""
        sequences = self.calibration_sequences or self.read_calibration_sequences()
        scores = score_sequences(
            self.model, self.score_head, sequences, self.tokenizer.pad_token_id, self.calibration_batch_size
        )
        require_finite(torch.tensor(scores), f"the reward model on calibration_files {self.calibration_files}")
        return sum(scores) / len(scores)

    def calibrate(self) -> float:
        """Shift the head's bias so that the calibration responses score mean 0; returns the shift."""
        shift = self.reference_mean_score()
        with torch.no_grad():
            self.score_head.linear.bias -= shift
        self.calibration_shift += shift
        rank_zero_info(f"reward: calibrated on {self.calibration_files}: bias shifted by {-shift:+.4f}")
        return shift

    def on_train_end(self) -> None:
        if self.calibration_files:
            self.calibrate()
        super().on_train_end()

    def save_final(self, folder: Path | None = None) -> Path:
        folder = super().save_final(folder)
        save_head(self.score_head, folder)
        self.update_run_info(folder, calibration_shift=self.calibration_shift)
        return folder
