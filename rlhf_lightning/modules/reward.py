"""Stage 2: a reward model learned from human comparisons and rankings."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from rlhf_lightning.callbacks import ThroughputMonitor
from rlhf_lightning.data.chat import text_rows_as_chat
from rlhf_lightning.data.degenerate import (
    DEGENERATE_KINDS,
    best_response,
    degenerate_answers,
    exploit_message,
    exploitable,
    has_prompt,
)
from rlhf_lightning.data.formats import RowLocation, scored_sequence
from rlhf_lightning.data.readers import describe, read_rows, shipped_default_warning
from rlhf_lightning.evaluation.report import markdown_table
from rlhf_lightning.models.reward import (
    ScalarHead,
    hidden_size_of,
    packed_sequence_scores,
    save_head,
    score_sequences,
    sequence_scores,
)
from rlhf_lightning.models.run_folder import DEGENERATE_FILE, RunFolder
from rlhf_lightning.models.score_function import require_finite
from rlhf_lightning.modules.base import CausalLMModule
from rlhf_lightning.modules.metrics import PreferenceMetrics, WeightedMean
from rlhf_lightning.modules.optim import OptimConfig
from rlhf_lightning.ops import preference_loss


class RewardModule(CausalLMModule):
    """A causal LM backbone (LoRA, optionally 4-bit) plus a scalar score head, trained with the
    Bradley-Terry loss ``-log sigmoid(r_better - r_worse - margin)`` averaged within each prompt.

    Start the backbone from the SFT stage's adapter with ``model.adapter: runs/sft/final``; LoRA trains the
    backbone, the head is always trained in full. Logged on
    train and validation: ``accuracy``, ``margin``, ``chosen_mean/std``, ``rejected_mean/std`` and the loss;
    ``val/accuracy`` is the natural checkpoint monitor.

    Args:
        optim: Optimizer and learning-rate schedule; by default a constant 3e-4 without warmup, which with
            ``head_init_std`` 0.02 matched a minimal transformers + peft recipe on held-out pairs after one
            epoch (docs/reward.md#what-costs-accuracy).
        center_coef: Reward centering ``c * (r_better + r_worse)^2`` per pair (0 = off; 0.01 is typical):
            keeps scores near 0 without changing their order.
        calibration_files: Reference responses (demonstrations in any accepted format). After training, the
            head's bias is shifted so that their mean score is 0 (InstructGPT's normalisation).
        calibration_batch_size: Sequences per forward pass during calibration (and the degenerate check).
        degenerate_check_prompts: After training, score degenerate answers (empty, cut mid-sentence, the prompt
            repeated, one phrase repeated) to up to this many held-out prompts and report how often each beats
            the real chosen answer (``final/degenerate_check.json``, ``degenerate/*`` in TensorBoard); warns
            when an empty answer outranks the median real one. 0 turns the check off.
        head_init_std: Standard deviation of the score head's initial weights: 0.02 (transformers'
            ``initializer_range`` for sequence-classification heads), ``null`` for ``1/sqrt(d+1)`` (Stiennon et
            al. 2020). It sets the spread of the initial, random scores: SmolLM2-135M's final
            hidden states have a norm of about 45, so ``1/sqrt(d+1)`` starts scores with a spread of about 2,
            0.02 of about 0.9, 0 at exactly 0.
        **kwargs: ``model`` and ``lora`` (:class:`~rlhf_lightning.modules.base.CausalLMModule`).
    """

    stage = "reward"
    validation_without_repeats = True  # sums over rows (torchmetrics), synced across ranks

    def __init__(
        self,
        *,
        optim: OptimConfig = OptimConfig(lr=3e-4, warmup_ratio=0.0, schedule="constant"),  # noqa: B008
        center_coef: float = 0.0,
        calibration_files: list[str] | None = None,
        calibration_batch_size: int = 16,
        degenerate_check_prompts: int = 64,
        head_init_std: float | None = 0.02,
        **kwargs,
    ) -> None:
        super().__init__(optim=optim, **kwargs)
        if head_init_std is not None and head_init_std < 0:
            raise ValueError(f"head_init_std must be >= 0 (or null for 1/sqrt(d+1)), got {head_init_std}")
        if center_coef < 0:
            raise ValueError(f"center_coef must be >= 0 (0: off), got {center_coef}")
        if calibration_batch_size < 1:
            raise ValueError(f"calibration_batch_size must be >= 1, got {calibration_batch_size}")
        self.center_coef = center_coef
        self.calibration_files = list(calibration_files or [])
        self.calibration_batch_size = calibration_batch_size
        self.degenerate_check_prompts = degenerate_check_prompts
        self.head_init_std = head_init_std
        self.degenerate_report: dict | None = None
        self.score_head: ScalarHead | None = None
        self.packing: bool | None = None  # shared-prompt packing: None until checked on the first packed batch
        self.calibration_shift = 0.0
        self.calibration_sequences: list[list[int]] = []
        self.train_metrics = PreferenceMetrics()
        self.val_metrics = PreferenceMetrics()
        self.val_loss = WeightedMean()

    def configure_heads(self) -> None:
        self.score_head = ScalarHead(hidden_size_of(self.model), self.head_init_std).to(self._target_device())

    def configure_callbacks(self) -> list:
        return [ThroughputMonitor()]

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return sequence_scores(self.model, self.score_head, input_ids, attention_mask)

    def batch_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores ``(n,)`` of a batch's sequences: from its packed rows (one pass per prompt) when the data
        packed them and the first such batch showed the packed scores equal to per-sequence ones."""
        if "packed_ids" in batch and self.packing is not False:
            if self.packing is None:
                self.packing = self.packing_agrees(batch)
            if self.packing:
                keys = ("packed_ids", "packed_positions", "packed_segments", "packed_last")
                return packed_sequence_scores(self.model, self.score_head, *(batch[k] for k in keys))
        return self.scores(batch["input_ids"], batch["attention_mask"])

    @torch.no_grad()
    def packing_agrees(self, batch: dict[str, torch.Tensor], tolerance: float = 1e-2) -> bool:
        """Whether this model scores a packed batch as it scores the sequences one by one (in eval mode): an
        attention implementation without 4D masks, or a model that ignores ``position_ids``, would not."""
        was_training = self.training
        self.eval()
        try:
            keys = ("packed_ids", "packed_positions", "packed_segments", "packed_last")
            packed = packed_sequence_scores(self.model, self.score_head, *(batch[k] for k in keys))
            alone = self.scores(batch["input_ids"], batch["attention_mask"])
            gap = (packed - alone).abs().max().item()
            agrees = bool(torch.isfinite(packed).all()) and gap <= tolerance * (1 + alone.abs().max().item())
            problem = f"its scores differ from per-sequence ones by up to {gap:.3g}"
        except (ValueError, RuntimeError) as error:  # an attention that refuses a 4D mask
            agrees, problem = False, str(error)
        finally:
            self.train(was_training)
        if agrees:
            rank_zero_info(f"reward: each prompt computed once for all its responses (scores checked: {gap:.1e})")
        else:
            rank_zero_warn(f"reward: shared-prompt packing is off: {problem}; each sequence is computed alone")
        return agrees

    def _step(self, batch: dict[str, torch.Tensor], metrics: PreferenceMetrics):
        scores = self.batch_scores(batch)
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
        self.val_loss.update(loss, (torch.bincount(batch["group"]) > 0).sum())  # a mean over the batch's prompts

    def on_validation_epoch_end(self) -> None:
        stats = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log("val/loss", self.val_loss.compute())
        self.val_loss.reset()
        self.log("val/accuracy", stats.pop("accuracy"), prog_bar=True)
        self.log_dict({f"val/{k}": v for k, v in stats.items()})

    # --- calibration and saving ----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Read and check the calibration files before any weight is loaded, so that a bad row in them stops
        the run now rather than after training."""
        self.check_inputs(getattr(self._trainer, "datamodule", None))

    def check_inputs(self, datamodule, folders: bool = True) -> None:
        """The calibration files, read and tokenized as the comparisons (their ``chat_template``)."""
        super().check_inputs(datamodule, folders)
        if self.calibration_files and not self.calibration_sequences:
            self.calibration_sequences = self.read_calibration_sequences(getattr(datamodule, "chat_template", None))
        train_files = getattr(datamodule, "train_files", None)
        for source in self.calibration_files if train_files else []:
            what = "the score is calibrated to mean 0 on that task's answers, not on answers to your prompts"
            message = shipped_default_warning("calibration_files", source, train_files, what)
            if message:
                rank_zero_warn(message)

    def read_calibration_sequences(self, chat_template: str | None = None) -> list[list[int]]:
        """Prompt + response ids of every calibration row, each ending at its EOS (the scored position); text
        rows are formatted as the comparisons are (``chat_template``, by default the run's
        ``data.chat_template``)."""
        sequences = []
        chat = text_rows_as_chat(self.tokenizer, chat_template or self.data_chat_template(), "data.chat_template")
        for source in self.calibration_files:
            name = describe(source)
            for row_number, row in read_rows(source):
                sequences.append(scored_sequence(row, self.tokenizer, RowLocation(name, row_number), chat))
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

    # --- degenerate answers ----------------------------------------------------------------------------------
    @torch.no_grad()
    def degenerate_check(self) -> dict | None:
        """Score degenerate variants (:mod:`rlhf_lightning.data.degenerate`) of the best real answer to each
        held-out prompt (the training prompts when nothing is held out) and compare them with the real answers.

        Returns ``{"prompts", "split", "median_real", "chosen_mean", "kinds": {kind: {"mean", "beats_chosen",
        "above_median_real"}}}``: per kind its mean score, the share of prompts where it scores above that
        prompt's chosen answer, and the share where it scores above the median of all real answers; ``None``
        when there is nothing to check (no prompts, or the check is off)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.degenerate_check_prompts <= 0 or not hasattr(datamodule, "answer_sequence"):
            return None
        split = "held-out" if datamodule.val_examples else "training"
        # rows without a prompt to answer (implicit-prompt pairs, a blank text prompt) cannot be checked
        pool = [e for e in datamodule.val_examples or datamodule.train_examples if has_prompt(e.prompt)]
        pool = pool[: self.degenerate_check_prompts]
        if not pool:
            rank_zero_info(f"reward: no degenerate-answer check: none of the {split} rows has a prompt to answer")
            return None
        best = [best_response(e.pairs) for e in pool]
        # the real answers only: training rows may carry added rejected variants after them
        sequences = [s for e in pool for s in e.sequences[: len(e.responses)]]
        variants = [degenerate_answers(e.prompt, e.responses[b]) for e, b in zip(pool, best)]
        for kind in DEGENERATE_KINDS:
            for e, answers in zip(pool, variants):
                sequences.append(datamodule.answer_sequence(e, answers[kind])[: datamodule.max_length])
        pad = self.tokenizer.pad_token_id
        scores = score_sequences(self.model, self.score_head, sequences, pad, self.calibration_batch_size)
        real_count = sum(len(e.responses) for e in pool)
        real, rest = scores[:real_count], scores[real_count:]
        offsets = [0]
        for e in pool:
            offsets.append(offsets[-1] + len(e.responses))
        chosen = [real[offsets[i] + b] for i, b in enumerate(best)]
        median_real = float(torch.tensor(real).median())
        kinds = {}
        for k, kind in enumerate(DEGENERATE_KINDS):
            variant = rest[k * len(pool) : (k + 1) * len(pool)]
            kinds[kind] = {
                "mean": sum(variant) / len(variant),
                "beats_chosen": sum(v > c for v, c in zip(variant, chosen)) / len(pool),
                "above_median_real": sum(v > median_real for v in variant) / len(pool),
            }
        return {
            "prompts": len(pool),
            "split": split,
            "median_real": median_real,
            "chosen_mean": sum(chosen) / len(chosen),
            "kinds": kinds,
        }

    def report_degenerate_check(self, report: dict) -> None:
        """Print and log the check's table, and warn about what a policy would exploit."""
        rows = [(kind, r["mean"], r["beats_chosen"], r["above_median_real"]) for kind, r in report["kinds"].items()]
        table = markdown_table(
            ["degenerate answer", "mean score", "beats the chosen answer", "above the median real answer"],
            rows,
            numbered=False,
        )
        header = (
            f"{report['prompts']} {report['split']} prompts; chosen answers score {report['chosen_mean']:.3f} on "
            f"average, the median real answer {report['median_real']:.3f}"
        )
        rank_zero_info(f"reward: degenerate-answer check, {header}\n{table}")
        experiment = getattr(self.logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_scalar"):
            step = self.trainer.global_step
            for kind, r in report["kinds"].items():
                experiment.add_scalar(f"degenerate/{kind}_beats_chosen", r["beats_chosen"], step)
                experiment.add_scalar(f"degenerate/{kind}_above_median_real", r["above_median_real"], step)
            experiment.add_text("degenerate_check", f"{header}\n\n{table}", step)
        flagged = exploitable(report)  # warned about at the very end of the run (on_train_end)
        for kind, r in report["kinds"].items():
            if kind not in flagged and r["beats_chosen"] > 0.5:
                rank_zero_warn(
                    f"reward: a {kind.replace('_', ' ')} answer beats the chosen one for "
                    f"{100 * r['beats_chosen']:.0f}% of the {report['split']} prompts: retrain with "
                    f"data.rejected_variants including {kind} (docs/reward.md#degenerate-answers)"
                )

    def on_train_end(self) -> None:
        if self.calibration_files:
            self.calibrate()
        self.degenerate_report = self.degenerate_check()
        if self.degenerate_report is not None:
            self.report_degenerate_check(self.degenerate_report)
        super().on_train_end()
        flagged = exploitable(self.degenerate_report) if self.degenerate_report is not None else {}
        if flagged:  # the run's last word, after the final folder's line; the pipeline stops before PPO on it
            rank_zero_warn(f"reward: {exploit_message(self.degenerate_report, flagged, str(self.final_folder()))}")

    def save_final(self, folder: Path | None = None) -> Path:
        folder = super().save_final(folder)
        save_head(self.score_head, folder)
        if self.degenerate_report is not None:
            (folder / DEGENERATE_FILE).write_text(json.dumps(self.degenerate_report, indent=2) + "\n")
        RunFolder(folder).update_info(calibration_shift=self.calibration_shift)
        return folder
