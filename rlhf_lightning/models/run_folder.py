"""What a run folder holds, read and written in one place.

A stage's run folder (``trainer.default_root_dir``) holds ``config.yaml``, TensorBoard event files,
``checkpoints/`` and ``final/``; a PPO run also ``heldout_prompts.jsonl``. The ``final`` folder is what later
stages, ``score``, ``evaluate`` and ``export`` take:

    rlhf_lightning.json       RunInfo: stage, base model, adapter or full model, chat_template, ...
    adapter_model.safetensors peft adapter (or model.safetensors, a full model)
    tokenizer files
    score_head.safetensors    a reward run's scalar head
    degenerate_check.json     a reward run's check of degenerate answers
    evaluation.json           a PPO run's final evaluation
    value/                    a PPO run's value adapter and head

Anything else (a Hugging Face model folder, a hub id, ``embedded``) is a full model without run info.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FINAL_FOLDER = "final"
RUN_INFO_FILE = "rlhf_lightning.json"
HEAD_FILE = "score_head.safetensors"
HELDOUT_FILE = "heldout_prompts.jsonl"
"""A PPO run folder's record of its evaluation prompts (a prompts file; each row names its ``origin``)."""
DEGENERATE_FILE = "degenerate_check.json"
"""In a reward run's ``final`` folder: how degenerate answers to held-out prompts scored after training."""
EVALUATION_FILE = "evaluation.json"
"""In a PPO run's ``final`` folder: its evaluation at the end of training (settings, summary, records)."""
VALUE_FOLDER = "value"


@dataclass
class RunInfo:
    """The contents of ``rlhf_lightning.json``."""

    stage: str | None = None
    """``sft``, ``reward`` or ``ppo``."""
    base_model: str = ""
    """The base model as the run named it (hub id, folder or ``embedded``)."""
    adapter: bool = False
    """Whether the folder holds a peft adapter on ``base_model`` (else a full model)."""
    base_model_path: str | None = None
    """``base_model`` resolved to a local folder when the run wrote it."""
    global_step: int = 0
    chat_template: str = "never"
    """How the run formatted text rows (``data.chat_template``); runs written before the option existed
    joined them as raw text."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Stage-specific fields (a PPO run's ``reference``, ``reward_model``, ``kl_coef``, ``stop_tokens``; a reward
    run's ``reference_mean_score``, ...)."""

    _KNOWN = ("stage", "base_model", "adapter", "base_model_path", "global_step", "chat_template")

    @classmethod
    def from_dict(cls, info: dict) -> RunInfo:
        known = {k: info[k] for k in cls._KNOWN if k in info}
        return cls(**known, extra={k: v for k, v in info.items() if k not in cls._KNOWN})

    def to_dict(self) -> dict:
        info = {k: v for k, v in asdict(self).items() if k != "extra"}
        return {**info, **self.extra}


def require_model(name: str, option: str) -> str:
    """``name`` when it can name a model: an existing folder, ``embedded``, or a hub id (``owner/name`` or
    ``name``); else an :class:`OptionError`-style ``ValueError`` naming ``option``, before anything is loaded."""
    if name == "embedded" or Path(name).exists():
        return name
    parts = name.split("/")
    looks_like_path = name.startswith((".", "/", "~")) or len(parts) > 2 or "\\" in name
    if looks_like_path or not all(parts):
        raise ModelNotFound(f"{option} {name}: no such folder (give a run's final folder, a model folder, a hub id "
                            "such as owner/name, or embedded)")  # fmt: skip
    return name


class ModelNotFound(ValueError):
    """A model option names a folder that does not exist."""


class RunFolder:
    """A ``final`` folder written by a stage, or any other model (a model folder, a hub id, ``embedded``).

    Args:
        path: The folder, or a model name.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = str(path)

    @property
    def is_run(self) -> bool:
        """Whether the folder was written by a stage (has ``rlhf_lightning.json``)."""
        return (self.path / RUN_INFO_FILE).exists()

    @property
    def info(self) -> RunInfo:
        """Raises ``FileNotFoundError`` when the folder is not a run's."""
        if not self.is_run:
            raise FileNotFoundError(f"{self.name} has no {RUN_INFO_FILE}: point at the 'final' folder of a run")
        return RunInfo.from_dict(json.loads((self.path / RUN_INFO_FILE).read_text()))

    @property
    def stage(self) -> str | None:
        return self.info.stage if self.is_run else None

    @property
    def adapter(self) -> str | None:
        """The adapter folder (this folder) when it holds an adapter, else ``None``."""
        return self.name if self.is_run and self.info.adapter else None

    @property
    def base_model(self) -> str:
        """What to load as the base: the run's base model under an adapter, else this folder or name."""
        return self.info.base_model if self.adapter is not None else self.name

    @property
    def tokenizer_source(self) -> str:
        """Where the tokenizer is: the folder when it saved one, else the base model."""
        return self.name if (self.path / "tokenizer_config.json").exists() else self.base_model

    @property
    def chat_template(self) -> str:
        """How the run formatted text rows; ``auto`` for a folder that is not a run's."""
        return self.info.chat_template if self.is_run else "auto"

    def require_stage(self, *stages: str, what: str = "") -> RunInfo:
        """The run info, or ``ValueError`` naming the folder when it is not a run's or holds another stage's
        output."""
        wanted = what or f"a {' or '.join(stages)} run's final folder"
        if not self.is_run:
            raise ValueError(f"{self.name} is not {wanted}: it has no {RUN_INFO_FILE} (a run's 'final' folder has)")
        info = self.info
        if info.stage not in stages:
            raise ValueError(f"{self.name} holds a '{info.stage}' model, not {wanted}")
        return info

    @staticmethod
    def write_info(folder: str | Path, info: RunInfo) -> None:
        (Path(folder) / RUN_INFO_FILE).write_text(json.dumps(info.to_dict(), indent=2) + "\n")

    def update_info(self, **extra: Any) -> None:
        """Add stage-specific fields to the run info."""
        info = self.info
        info.extra.update(extra)
        self.write_info(self.path, info)
