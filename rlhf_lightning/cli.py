"""The ``rlhf-lightning`` command: LightningCLI for the stages (``fit``, ``validate``, ...).

Each run writes one folder, ``trainer.default_root_dir``:

    config.yaml          the resolved configuration
    events.out.tfevents  TensorBoard logs (``tensorboard --logdir runs``)
    checkpoints/         adapter-only Lightning checkpoints, ``last.ckpt`` among them
    final/               the trained adapter in peft format, tokenizer, rlhf_lightning.json
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from jsonargparse import set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from rlhf_lightning.data.errors import DataFormatError, OptionError
from rlhf_lightning.models.loading import quiet_transformers
from rlhf_lightning.models.score_function import ScoreError
from rlhf_lightning.modules.guard import NonFiniteStepsError

DEFAULT_RUN_DIR = "runs/default"


class RLHFLightningCLI(LightningCLI):
    """LightningCLI with this project's run-folder layout, checkpointing and progress bar."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # resumed runs rewrite config.yaml
        kwargs.setdefault("trainer_defaults", {"default_root_dir": DEFAULT_RUN_DIR})
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "step{step:06d}"})
        parser.set_defaults({"checkpoint.auto_insert_metric_name": False})

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            # Our checkpoints carry the config dataclasses and RNG states, which torch's weights-only
            # unpickler refuses. They are files the user's own runs wrote.
            parser.set_defaults(weights_only=False)
        return parser

    def _parse_ckpt_path(self) -> None:
        """Lightning would re-read the model's hyperparameters from ``--ckpt_path`` (with torch's weights-only
        unpickler, which refuses our checkpoints) and let them override the command line. Here the
        configuration comes from ``--config`` and the command line (the run folder's ``config.yaml``), and a
        checkpoint supplies weights and training state only."""

    def _instantiate_trainer(self, config: dict, callbacks: list) -> Trainer:
        root = config.get("default_root_dir") or DEFAULT_RUN_DIR
        config["default_root_dir"] = root
        if config.get("logger") in (None, True):
            config["logger"] = TensorBoardLogger(save_dir=root, name="", version="", default_hp_metric=False)
        has_bar = any(isinstance(c, ProgressBar) for c in [*callbacks, *(config.get("callbacks") or [])])
        if config.get("enable_progress_bar", True) is not False and not has_bar:
            callbacks.append(RichProgressBar())
        return super()._instantiate_trainer(config, callbacks)

    def before_fit(self) -> None:
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        last = Path(self.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        if ckpt_path is None and last.exists():
            sys.exit(
                f"error: {self.trainer.default_root_dir} already holds a run ({last}).\n"
                "Resume it with --ckpt_path last, or start a new run with --trainer.default_root_dir OTHER_DIR."
            )


COMMANDS = {  # name: (module, function, required arguments are positional)
    "score": ("rlhf_lightning.commands.score", "score_file", True),
    "export": ("rlhf_lightning.commands.export", "export_model", True),
    "evaluate": ("rlhf_lightning.commands.evaluate", "evaluate_policies", False),
    "pipeline": ("rlhf_lightning.commands.pipeline", "run_pipeline", False),
}


USER_ERRORS = (DataFormatError, OptionError, ScoreError, NonFiniteStepsError)
"""Errors whose message says everything (file, row, field; option and value; function and value; the step):
printed without a traceback."""


def main(argv: list[str] | None = None) -> None:
    """``rlhf-lightning fit|validate|... --config ...`` (LightningCLI) or one of the :data:`COMMANDS`."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_transformers()
    try:
        _run(sys.argv[1:] if argv is None else argv, argv)
    except USER_ERRORS as error:
        sys.exit(f"error: {error}")


def _run(args: list[str], argv: list[str] | None) -> None:
    if args and args[0] in COMMANDS:
        import importlib

        from jsonargparse import CLI

        module, function, positional = COMMANDS[args[0]]
        CLI(
            getattr(importlib.import_module(module), function),
            args=args[1:],
            prog=f"rlhf-lightning {args[0]}",
            as_positional=positional,
        )
        return
    RLHFLightningCLI(args=argv)


# The config dataclasses document each field in an attribute docstring; show them in --help and
# --print_config=comments.
set_parsing_settings(docstring_parse_attribute_docstrings=True)


if __name__ == "__main__":
    main()
