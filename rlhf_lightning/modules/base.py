"""What every stage shares: model loading, adapter-only checkpoints, RNG state, optimizer, final export."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.utilities import rank_zero_info

from rlhf_lightning.models import LoraConfig, ModelConfig, count_parameters, load_causal_lm, load_tokenizer
from rlhf_lightning.models.embedded import resolve_model_path
from rlhf_lightning.models.run_folder import FINAL_FOLDER, RunFolder, RunInfo, require_model
from rlhf_lightning.modules.guard import NonFiniteGuard
from rlhf_lightning.modules.optim import OptimConfig, build_optimizer, build_scheduler

log = logging.getLogger(__name__)


class CausalLMModule(L.LightningModule):
    """Base of the stage modules: the options every stage has. Subclasses set ``stage``, implement the steps,
    and declare the options whose meaning or default is their own.

    Checkpoints hold only the trainable weights (LoRA adapters, heads), not the frozen base model, plus the
    optimizer, scheduler, loop state and all RNG states, so that ``--ckpt_path last`` continues exactly.

    Args:
        model: Which model to load and how (dtype, quantization, checkpointing); ``adapter`` starts from an
            earlier stage's adapter (the SFT run's ``final`` folder for the reward model and PPO).
        lora: LoRA adapters, or ``enabled: false`` for full fine-tuning (heads are always trained in full).
        optim: Optimizer and learning-rate schedule.
    """

    stage = "base"
    validation_without_repeats = False
    """Whether the validation metrics are sums over rows synced across ranks, so that under DDP the validation rows
    may split across the ranks unevenly rather than with rows repeated to even them out (which would count those
    rows twice): see ``RowsDataModule.val_dataloader``."""

    def __init__(
        self,
        model: ModelConfig = ModelConfig(),  # noqa: B008 - dataclass defaults show every field in --help
        lora: LoraConfig = LoraConfig(),  # noqa: B008
        optim: OptimConfig = OptimConfig(),  # noqa: B008
    ) -> None:
        super().__init__()
        self.model_config = model
        self.lora_config = lora
        self.optim_config = optim
        self.model: torch.nn.Module | None = None
        self.tokenizer = load_tokenizer(model.name_or_path, model.revision, model.trust_remote_code)
        self.strict_loading = False  # base weights are deliberately absent from checkpoints
        self.nonfinite = NonFiniteGuard(optim.max_nonfinite_steps)
        self._step_losses: list[torch.Tensor] = []
        self.save_hyperparameters()  # every stage's own arguments too: Lightning reads the subclasses' frames

    # --- model -----------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.require_folders()
        self.model = load_causal_lm(self.model_config, self.lora_config, device=self._target_device())
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes as they are
        self.configure_heads()
        trainable, total = count_parameters(self)
        rank_zero_info(
            f"{self.stage}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)"
        )

    def configure_heads(self) -> None:
        """Create any head on top of the model (called once, right after the model is loaded)."""

    def named_folders(self) -> dict[str, str | None]:
        """The model folders the stage's options name, by option: they must exist before any weight loads."""
        return {"model.adapter": self.model_config.adapter}

    def require_folders(self) -> None:
        """A one-line :class:`~rlhf_lightning.models.run_folder.ModelNotFound` for a named folder that does not
        exist (instead of a loader's traceback once loading has begun)."""
        for option, name in self.named_folders().items():
            if name is not None:
                require_model(name, option)

    def check_inputs(self, datamodule, folders: bool = True) -> None:
        """Read and check every file and function the stage itself names (beyond its DataModule's rows), and with
        ``folders`` that the model folders it names exist, with no weight loaded; raises the error the run would
        stop with. ``rlhf-lightning check`` and the pipeline's check of every stage before the first trains
        (``folders`` off: the earlier stages write them) call it after ``datamodule.setup``."""
        if folders:
            self.require_folders()

    def _target_device(self) -> torch.device:
        return self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")

    # --- checkpoints -----------------------------------------------------------------------------------
    def _trainable_names(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = self._trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["rng_states"] = _collect_rng_states()
        checkpoint["nonfinite_steps"] = self.nonfinite.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = set(checkpoint["state_dict"])
        missing = self._trainable_names() - saved
        unexpected = saved - {name for name, _ in self.named_parameters()}
        if missing or unexpected:
            raise RuntimeError(
                "the checkpoint does not match this model's trainable weights "
                f"({len(missing)} missing, e.g. {sorted(missing)[:2]}; {len(unexpected)} unexpected, e.g. "
                f"{sorted(unexpected)[:2]}). Was it written with another model or LoRA configuration?"
            )
        # Applied at the first training batch, not now: Lightning creates the training data loader's
        # iterator after this hook, and that draws from the global RNG (its base seed). The saved states are
        # those at the end of the checkpointed step, which is where the next batch must start from.
        self._pending_rng_states = checkpoint.get("rng_states")
        if "nonfinite_steps" in checkpoint:
            self.nonfinite.load_state_dict(checkpoint["nonfinite_steps"])

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if getattr(self, "_pending_rng_states", None) is not None:
            _set_rng_states(self._pending_rng_states)
            self._pending_rng_states = None

    def on_fit_start(self) -> None:
        self._rebuild_training_data_after_restore()

    def _rebuild_training_data_after_restore(self) -> None:
        """Make a resumed run's training loader start at the checkpoint's data position.

        ``configure_optimizers`` sizes the schedule from the number of training batches under ``max_epochs``
        (``trainer.estimated_stepping_batches``, PPO's ``planned_optimizer_steps``), and Lightning builds the
        training loader for that, and starts iterating it, before the checkpoint's loop state is restored. The
        fit loop then keeps that loader and never hands it the saved position (Lightning issue #20550): a run
        resumed mid-epoch started the epoch's batches over. This hook runs after the optimizers are configured
        and before the restore; dropping the early loader makes the fit loop build it again after the restore,
        with the saved position. Nothing changes for a run that does not resume."""
        trainer = self.trainer
        resuming = trainer.ckpt_path is not None or trainer.strategy.restore_checkpoint_after_setup
        fit_loop = trainer.fit_loop
        if not resuming or fit_loop._combined_loader is None:
            return
        if fit_loop._data_fetcher is not None:
            fit_loop._data_fetcher.teardown()  # stops the early iterator (and its workers)
            fit_loop._data_fetcher = None
        fit_loop._combined_loader = None

    # --- optimization ----------------------------------------------------------------------------------
    def on_before_backward(self, loss: torch.Tensor) -> None:
        self._step_losses.append(loss.detach())

    def step_is_finite(self, optimizer) -> bool:
        """Check the step about to be taken (the losses back-propagated since the last one and the gradient
        norm) on every rank; a non-finite step is counted and its gradients dropped. Returns whether to step."""
        losses, self._step_losses = self._step_losses, []
        params = [p for group in optimizer.param_groups for p in group["params"]]
        finite = self.nonfinite.is_finite(params, losses)
        finite = not self.trainer.strategy.reduce_boolean_decision(not finite, all=False)
        return self.nonfinite.check(params, finite, self.trainer.global_step)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Automatic optimization: skip a non-finite step. Under ``16-mixed`` the gradient scaler already
        skips such steps (and lowers its scale), so nothing is done here."""
        if not self.automatic_optimization:
            return
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            self._step_losses = []
            return
        self.step_is_finite(optimizer)
        self.log("train/nonfinite_steps", float(self.nonfinite.total))

    def configure_optimizers(self):
        optimizer = build_optimizer(self.parameters(), self.optim_config)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(optimizer, total, self.optim_config)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- final output ----------------------------------------------------------------------------------
    def final_folder(self) -> Path:
        return Path(self.trainer.log_dir or self.trainer.default_root_dir) / FINAL_FOLDER

    def save_final(self, folder: Path | None = None) -> Path:
        """Write the trained weights (:meth:`save_weights`), the tokenizer, and a small ``rlhf_lightning.json``
        that tells later stages what this folder holds (:meth:`run_info`)."""
        folder = Path(folder) if folder is not None else self.final_folder()
        folder.mkdir(parents=True, exist_ok=True)
        self.save_weights(folder)
        self.tokenizer.save_pretrained(folder)
        RunFolder.write_info(folder, self.run_info())
        return folder

    def save_weights(self, folder: Path) -> None:
        """The adapter (peft ``save_pretrained`` format) or the full model."""
        self.model.save_pretrained(folder)

    def run_info(self) -> RunInfo:
        """What this run's ``final`` folder holds, for ``rlhf_lightning.json``; stages add their own fields."""
        return RunInfo(
            stage=self.stage,
            base_model=self.model_config.name_or_path,
            adapter=self.lora_config.enabled or self.model_config.adapter is not None,
            base_model_path=resolve_model_path(self.model_config.name_or_path),
            global_step=self.trainer.global_step if self._trainer is not None else 0,
            chat_template=self.data_chat_template(),
        )

    def data_chat_template(self) -> str:
        """The run's ``data.chat_template`` (how text rows are formatted; ``auto`` without a DataModule), recorded
        in the final folder so that ``score`` and ``evaluate`` format text rows as training did."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(datamodule, "chat_template", "auto")

    def on_train_end(self) -> None:
        folder = self.final_folder()  # on every rank: trainer.log_dir is a collective call under DDP
        if self.trainer.is_global_zero:
            self.save_final(folder)
            rank_zero_info(
                f"{self.stage}: final {'adapter' if self.lora_config.enabled else 'model'} saved to {folder}"
            )
