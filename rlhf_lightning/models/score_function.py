"""Scores that come from outside the model: ``module:function`` rewards and gold rules, and the check that
every score reaching training or a report is a finite number, one per response.

A reward function that returns ``None`` for a response it cannot judge, a NaN from ``0/0``, a string or a
list of the wrong length would otherwise turn into NaN advantages and NaN weights a few lines later (or into
a report averaged over garbage). :func:`checked_scores` stops at the bad value instead, naming it.
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import sys
from collections.abc import Callable, Sequence

import torch

FLOAT32_MAX = torch.finfo(torch.float32).max


class ScoreError(ValueError):
    """A reward or gold function, or a reward model, gave something other than one finite number per response."""


def import_callable(path: str) -> Callable:
    """``package.module:function`` (or ``package.module.function``) to the function."""
    module_name, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    if os.getcwd() not in sys.path:  # a module in the folder the command runs in, as `python -m` finds it
        sys.path.append(os.getcwd())
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"cannot import {path!r} (expected 'package.module:function'): {error}") from error


class ScoreFunction:
    """A user's ``module:function`` with ``f(prompts: list[str], responses: list[str]) -> list[float]``, whose
    every result is checked by :func:`checked_scores`. ``option`` names the setting it came from in errors
    (``reward_function``, ``gold_function``)."""

    def __init__(self, path: str, option: str) -> None:
        self.path, self.option = path, option
        self.function = import_callable(path)

    def __call__(
        self, prompts: list[str], responses: list[str], when: str = "", device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Scores ``(len(responses),)``; ``when`` adds context to errors (``"at iteration 3"``)."""
        values = self.function(prompts, responses)
        source = " ".join(filter(None, [self.option, self.path, when]))
        return checked_scores(values, len(responses), source, device)


def checked_scores(values: object, count: int, source: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """``values`` as a float32 tensor ``(count,)``, or :class:`ScoreError` naming ``source`` (for example
    ``"reward_function my.rules:score at iteration 12"``), the bad value and the response index.

    Accepted: a sequence (or 1-d tensor / array) of ``count`` real numbers (Python, NumPy or 0-d tensors;
    booleans are refused as likely mistakes), every one finite.
    """
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ScoreError(f"{source} returned a tensor of shape {tuple(values.shape)}; expected ({count},)")
        items: Sequence = values.detach().cpu().tolist()
    elif isinstance(values, Sequence) and not isinstance(values, str | bytes) or hasattr(values, "tolist"):
        items = values.tolist() if hasattr(values, "tolist") else values
    else:
        raise ScoreError(f"{source} returned {type(values).__name__}; expected a list of {count} numbers")
    if not isinstance(items, list | tuple) or len(items) != count:
        got = len(items) if isinstance(items, list | tuple) else type(items).__name__
        raise ScoreError(f"{source} returned {got} scores for {count} responses; expected one number per response")
    scores = []
    for i, value in enumerate(items):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            kind = type(value).__name__
            raise ScoreError(f"{source} returned {value!r} ({kind}) for response {i}; expected a number")
        try:
            number = float(value)
        except OverflowError:  # an int beyond any float
            number = math.inf if value > 0 else -math.inf
        if not math.isfinite(number):
            raise ScoreError(f"{source} returned {value!r} for response {i}; scores must be finite numbers")
        if abs(number) > FLOAT32_MAX:
            raise ScoreError(
                f"{source} returned {value!r} for response {i}, beyond float32's range (+-{FLOAT32_MAX:.3g})"
            )
        scores.append(number)
    return torch.tensor(scores, dtype=torch.float32, device=device)


def require_finite(scores: torch.Tensor, source: str) -> torch.Tensor:
    """``scores`` ``(b,)`` unchanged, or :class:`ScoreError` naming ``source`` and the first non-finite one."""
    bad = (~torch.isfinite(scores)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise ScoreError(f"{source} gave {scores[i].item()} for response {i}; scores must be finite numbers")
    return scores
