"""Lightning's ``ModelCheckpoint``, written again after a validation that follows it, so that a run resumed from
it does not lose that validation; and the loggers flushed before every write."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (same options, same state in the checkpoint), with two differences.

    - A checkpoint written after a training batch (``every_n_train_steps``) is written again, to the same files,
      at the end of a validation that runs right after that batch (``trainer.val_check_interval``). Lightning
      writes it before that validation, and a run resumed from it skips the validation (its loop state says the
      validation is still to come, and Lightning does not run it on resume): the resumed run's evaluation curve
      lacked that point (PPO's ``overoptimization`` in ``final/evaluation.json``). Written after the
      validation, the checkpoint holds what the validation added, and Lightning resumes after it.
    - The loggers are flushed before each write and at the start of the batch after one: what was logged up to a
      checkpoint is on disk even if the process is then killed (TensorBoard's writer otherwise keeps up to
      2 minutes of events in memory), since a run resumed from the checkpoint does not log it again.

    The class keeps Lightning's name, so checkpoints written with either class restore its state.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._writing_after_batch: list[str] | None = None  # files written in the current on_train_batch_end
        self._rewrite_after_validation: list[str] = []
        self._rewrite_step = -1
        self._flush_before_next_batch = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._writing_after_batch = []
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            self._rewrite_after_validation = self._writing_after_batch
            self._rewrite_step = trainer.global_step
        finally:
            self._writing_after_batch = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._rewrite_after_validation = []  # no validation came after the last batch
        if self._flush_before_next_batch:  # the last batch's scalars reach the loggers after its checkpoint
            self._flush_before_next_batch = False
            flush_loggers(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        files, self._rewrite_after_validation = self._rewrite_after_validation, []
        if (
            trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or trainer.global_step != self._rewrite_step
        ):
            return
        for filepath in files:
            self._save_checkpoint(trainer, filepath)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        flush_loggers(trainer)
        super()._save_checkpoint(trainer, filepath)
        self._flush_before_next_batch = True
        if self._writing_after_batch is not None and filepath not in self._writing_after_batch:
            self._writing_after_batch.append(filepath)


def flush_loggers(trainer) -> None:
    """Write what the trainer's loggers hold in memory to disk (``logger.save()``; rank 0 only)."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.save()


__all__ = ["ModelCheckpoint", "flush_loggers"]
