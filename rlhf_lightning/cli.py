"""The ``rlhf-lightning`` command: LightningCLI for the stages (``fit``, ``validate``) and the commands
(``pipeline``, ``evaluate``, ``score``, ``export``, ``generate``, ``label``); ``rlhf-lightning --help`` lists them.

Each run writes one folder, ``trainer.default_root_dir``:

    config.yaml          the resolved configuration
    events.out.tfevents  TensorBoard logs (``tensorboard --logdir runs``)
    checkpoints/         adapter-only Lightning checkpoints, ``last.ckpt`` among them
    final/               the trained adapter in peft format, tokenizer, rlhf_lightning.json
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import traceback
from pathlib import Path

from jsonargparse import CLI, set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from rlhf_lightning.callbacks import ModelCheckpoint
from rlhf_lightning.commands.evaluate import evaluate_policies
from rlhf_lightning.commands.export import export_model
from rlhf_lightning.commands.generate import generate_candidates
from rlhf_lightning.commands.label import export_labels, judge_labels
from rlhf_lightning.commands.label_app import serve
from rlhf_lightning.commands.pipeline import run_pipeline
from rlhf_lightning.commands.score import score_file
from rlhf_lightning.data.base import RowsDataModule
from rlhf_lightning.data.errors import DataFormatError, OptionError
from rlhf_lightning.data.labels import LabelError
from rlhf_lightning.data.prompts import PromptsDataModule
from rlhf_lightning.models.loading import UnsupportedModel, quiet_transformers
from rlhf_lightning.models.run_folder import ModelNotFound
from rlhf_lightning.models.score_function import ScoreError
from rlhf_lightning.modules.guard import NonFiniteStepsError

DEFAULT_RUN_DIR = "runs/default"


class RLHFLightningCLI(LightningCLI):
    """LightningCLI with this project's run-folder layout, checkpointing and progress bar."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` and ``validate`` only: the stages have no test or predict step."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in TRAINER_COMMANDS}

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

    def instantiate_classes(self) -> None:
        """jsonargparse reports a constructor's refusal of an option (``optim.betas must be ...``) wrapped in
        a union-type error with the whole parsed namespace; the user gets the refusal's own line."""
        try:
            super().instantiate_classes()
        except ValueError as error:
            refusal = option_refusal(error)
            if refusal is None:
                raise
            raise refusal from None

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


def option_refusal(error: BaseException) -> Exception | None:
    """The error a stage's constructor raised, as :class:`OptionError` (a :data:`USER_ERRORS` kept as it is),
    when ``error`` is jsonargparse's wrapper of one raised by this package's own checks (a ``ValueError``, or
    :class:`UnsupportedModel`); ``None`` for anything else."""
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if cause is error:
        return None
    if isinstance(cause, USER_ERRORS):
        return cause
    frames = traceback.extract_tb(cause.__traceback__)
    ours = bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(PACKAGE)
    return OptionError(str(cause)) if ours and isinstance(cause, ValueError) else None


TRAINER_COMMANDS = {
    "fit": "train a stage (SFT, reward model or PPO) from its YAML config: fit --config configs/sft.yaml",
    "validate": "run a stage's validation (PPO: its held-out evaluation), e.g. from a checkpoint (--ckpt_path)",
}
CHECK_COMMAND = "check"
"""``rlhf-lightning check`` takes a stage's ``fit`` arguments: it reads and checks every file and function
they name, with no weight loaded (:func:`check_stage`)."""
CHECK_PROMPTS = "--check.prompts="
CHECK_SKIP_DATA = "--check.skip_data"
CHECK_HELDOUT = "--check.write_heldout="
CHECK_SKIP_FOLDERS = "--check.skip_folders"
COMMANDS = {  # name: (function, required arguments are positional, one line for --help)
    "pipeline": (run_pipeline, False, "SFT -> reward model -> PPO -> evaluation -> export in one root folder"),
    "evaluate": (evaluate_policies, False,
                 "compare two policies on the same prompts: reward-model score, win rate, KL, gold score"),
    "score": (score_file, True, "score (prompt, response) rows with a reward model"),
    "export": (export_model, True, "merge a run's adapter into its base model: a plain Hugging Face folder"),
    "generate": (generate_candidates, False, "sample K candidate responses per prompt into a labelling database"),
    "label": (serve, True, "rank candidates in the browser (label DB); label export DB OUT.jsonl; label judge DB"),
}  # fmt: skip
LABEL_COMMANDS = {"export": export_labels, "judge": judge_labels}
"""``rlhf-lightning label export|judge ...``; any other ``label`` argument is the database to serve."""


USER_ERRORS = (
    DataFormatError,
    OptionError,
    ScoreError,
    NonFiniteStepsError,
    LabelError,
    ModelNotFound,
    UnsupportedModel,
    FileNotFoundError,
)
"""Errors whose message says everything (file, row, field; option and value; function and value; the step):
printed without a traceback."""
PACKAGE = Path(__file__).resolve().parent


def check_stage(args: list[str]) -> None:
    """``rlhf-lightning check --config STAGE.yaml [fit options]``: build the stage as ``fit`` would (options
    checked by its constructors), read, validate and tokenize every row of its DataModule
    (``RowsDataModule.setup``) and the files and functions the stage itself names (``check_inputs``: the reward
    stage's calibration files, PPO's stop tokens and score functions), then print one line of counts. No model
    weight is loaded and nothing is written.

    Options of its own, used by the pipeline: ``--check.prompts=JSON_LIST`` also reads those prompt files with
    the stage's data settings (its evaluation and labelling prompts), ``--check.skip_data`` leaves the
    DataModule's rows out (a labelling database that the pipeline has not created yet),
    ``--check.skip_folders`` does not require the model folders it names to exist yet (the earlier stages of a
    pipeline write them), and ``--check.write_heldout=PATH`` writes a prompts DataModule's held-out prompts
    there (what the PPO stage will evaluate on, for the stages before it to leave out)."""
    prompts: list[str] = []
    skip_data, skip_folders, heldout = CHECK_SKIP_DATA in args, CHECK_SKIP_FOLDERS in args, None
    rest = []
    for arg in args:
        if arg.startswith(CHECK_PROMPTS):
            value = arg.removeprefix(CHECK_PROMPTS)
            try:
                given = json.loads(value) if value.lstrip().startswith("[") else [value]
            except json.JSONDecodeError as error:
                raise OptionError(f"--check.prompts: expected a JSON list of files, got {value!r} ({error})") from None
            prompts += [given] if isinstance(given, str) else list(given)
        elif arg.startswith(CHECK_HELDOUT):
            heldout = arg.removeprefix(CHECK_HELDOUT)
        elif arg not in (CHECK_SKIP_DATA, CHECK_SKIP_FOLDERS):
            rest.append(arg)
    with tempfile.TemporaryDirectory() as scratch:  # the trainer's run folder: nothing is written to the real one
        cli = RLHFLightningCLI(args=[*nested_nulls(rest), f"--trainer.default_root_dir={scratch}"], run=False)
    model, data = cli.model, cli.datamodule
    if isinstance(data, RowsDataModule) and data.tokenizer_name is None:
        data.tokenizer = model.tokenizer
    checked = []
    if not skip_data:
        data.setup("fit")
        checked.append(f"{type(data).__name__}: {data.stats['train examples']} training and "
                       f"{data.stats['val examples']} validation rows")  # fmt: skip
        if heldout is not None and isinstance(data, PromptsDataModule):
            checked.append(f"{data.write_heldout(heldout)} held-out prompts written to {heldout}")
    check_inputs = getattr(model, "check_inputs", None)
    if check_inputs is not None:
        check_inputs(data, folders=not skip_folders)
    for source in prompts:
        extra = PromptsDataModule(
            train_files=source,
            val_fraction=0.0,
            max_length=getattr(data, "max_length", 1024),
            overlong=getattr(data, "overlong", "drop"),
            chat_template=getattr(data, "chat_template", "auto"),
        )
        extra.tokenizer = model.tokenizer
        extra.setup("fit")
        checked.append(f"{source}: {extra.stats['train examples']} prompts")
    print(f"checked: {'; '.join(checked) or 'the options'}", flush=True)


def usage() -> str:
    lines = ["usage: rlhf-lightning COMMAND [OPTIONS]", "", "commands:"]
    every = {**TRAINER_COMMANDS, CHECK_COMMAND: "read and check every file a stage's config names (no training): "
             "check --config configs/reward.yaml", **{name: spec[2] for name, spec in COMMANDS.items()}}  # fmt: skip
    lines += [f"  {name:<10} {text}" for name, text in every.items()]
    lines += ["", "rlhf-lightning COMMAND --help shows a command's options. The README starts with a full run."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``rlhf-lightning fit|validate --config ...`` (LightningCLI) or one of the :data:`COMMANDS`."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return
    if args[0] not in TRAINER_COMMANDS and args[0] not in COMMANDS and args[0] != CHECK_COMMAND:
        sys.exit(f"error: unknown command {args[0]!r}\n\n{usage()}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_transformers()
    try:
        _run(args, from_command_line=argv is None)
    except USER_ERRORS as error:
        sys.exit(f"error: {error}")


def _run(args: list[str], from_command_line: bool) -> None:
    if args[0] == "label" and len(args) > 1 and args[1] in LABEL_COMMANDS:
        CLI(LABEL_COMMANDS[args[1]], args=args[2:], prog=f"rlhf-lightning label {args[1]}", as_positional=True)
        return
    if args[0] == CHECK_COMMAND:
        if from_command_line:
            sys.argv[1:] = []  # the arguments go to LightningCLI (which warns when the command line has others)
        check_stage(args[1:])
        return
    if args[0] in COMMANDS:
        function, positional, _ = COMMANDS[args[0]]
        CLI(function, args=args[1:], prog=f"rlhf-lightning {args[0]}", as_positional=positional)
        return
    if from_command_line:  # LightningCLI reads sys.argv itself (and warns when given both)
        sys.argv[1:] = nested_nulls(args)
        RLHFLightningCLI()
    else:
        RLHFLightningCLI(args=nested_nulls(args))


def nested_nulls(args: list[str]) -> list[str]:
    """``--model.init_args.model.adapter=null`` as ``--model.init_args.model={adapter: null}``.

    jsonargparse (4.53) turns a null given for a field of a dataclass inside a subclass's arguments into the
    string ``"None"`` (the nested value is passed on as text); given as a mapping it stays null. The
    ``model`` and ``data`` groups (``init_args.`` may be left out) are rewritten, in the ``--key=value`` and
    the ``--key value`` forms.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        key, eq, value = arg.partition("=")
        if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, step = args[i + 1], 2
        else:
            step = 1
        parts = key.removeprefix("--").split(".")
        group, rest = parts[0], parts[1:]
        if rest[:1] == ["init_args"]:
            rest = rest[1:]
        if key.startswith("--") and group in ("model", "data") and len(rest) >= 2 and _is_null(value):
            nested: object = None
            for part in reversed(rest[1:]):
                nested = {part: nested}
            out.append(f"--{group}.init_args.{rest[0]}={json.dumps(nested)}")
            i += step
            continue
        out.append(arg)
        i += 1
    return out


def _is_null(text: str) -> bool:
    return text.strip() in ("null", "Null", "NULL", "~")


# The config dataclasses document each field in an attribute docstring; show them in --help and
# --print_config=comments.
set_parsing_settings(docstring_parse_attribute_docstrings=True)


if __name__ == "__main__":
    main()
