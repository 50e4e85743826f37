"""The development tasks: the embedded model's own answers to a family of prompts, labelled by a written rule.

Each task is a module with ``TASK`` (:class:`~rlhf_lightning.tasks.base.Task`), ``gold_parts``, ``gold_score``
and ``gold_reward`` (the PPO evaluation's ``gold_function``, ``rlhf_lightning.tasks.NAME:gold_reward``); its files
ship in ``rlhf_lightning/data/assets`` as ``builtin:NAME_*.jsonl`` and are written by
``python -m rlhf_lightning.tasks.generate NAME`` (docs/development-task.md).
"""

from pathlib import Path

from rlhf_lightning.tasks import everyday, lengths, lists, tone

ASSETS = Path(__file__).resolve().parents[1] / "data" / "assets"
"""Where the tasks' files ship (read as ``builtin:NAME``)."""
TASKS = {module.TASK.name: module.TASK for module in (everyday, lists, lengths, tone)}
"""Every development task by name."""

__all__ = ["ASSETS", "TASKS"]
