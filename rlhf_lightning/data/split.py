"""The held-out split, by prompt: every row that answers the same prompt lands on the same side.

A preference dataset often holds several rows per prompt (several annotators on one item, a judge and a
person, the pairs of one ranking, files with several pairs per prompt), and a demonstration or prompt file
may repeat a prompt. Splitting rows at random would put the same prompt, often the same answers, on both
sides, and validation would measure memory instead of generalisation. :func:`prompt_group` names the prompt
a row answers and :func:`split_groups` holds out whole prompts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

__all__ = ["prompt_group", "split_groups"]


def _common_prefix(a: object, b: object) -> object:
    """The shared start of two texts or two message lists (the implicit prompt of a ``chosen``/``rejected``
    pair, as in TRL's ``extract_prompt``); ``None`` when they are of different kinds."""
    if isinstance(a, str) and isinstance(b, str):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return a[:n]
    if isinstance(a, list) and isinstance(b, list):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return a[:n]
    return None


def _before_first_answer(messages: list) -> list:
    """The messages before the first assistant turn: the context every trained answer of the row follows."""
    for i, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "assistant":
            return messages[:i]
    return messages


def prompt_group(row: object) -> str:
    """The key of the prompt ``row`` answers: canonical JSON of its prompt (outer whitespace of a text prompt
    ignored; a lone user message counts as its text) and its ``tools``. The prompt is the ``prompt`` field when
    there is one; for a ``messages`` row,
    the messages before its first assistant turn; for an implicit-prompt pair, what ``chosen`` and
    ``rejected`` share at the start; for a ``text`` row, the text itself. Any other row is its own group.
    Rows are read as given (this runs before validation, on every row, dropped ones included)."""
    if not isinstance(row, dict):
        return json.dumps(row, sort_keys=True, default=str)
    if "prompt" in row:
        prompt = row["prompt"]
    elif isinstance(row.get("messages"), list):
        prompt = _before_first_answer(row["messages"])
    elif "chosen" in row and "rejected" in row:
        prompt = _common_prefix(row["chosen"], row["rejected"])
    elif "text" in row:
        prompt = row["text"]
    else:
        prompt = None
    if prompt is None or prompt == [] or prompt == "":
        return json.dumps(row, sort_keys=True, default=str)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], dict):
        if (
            set(prompt[0]) == {"role", "content"}
            and prompt[0]["role"] == "user"
            and isinstance(prompt[0]["content"], str)
        ):
            prompt = prompt[0]["content"]  # one user message is what a text prompt becomes on a chat model
    if isinstance(prompt, str):
        prompt = prompt.strip()
    return json.dumps({"prompt": prompt, "tools": row.get("tools") or None}, sort_keys=True, default=str)


def split_groups(groups: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The held-out groups: ``max(1, round(fraction * number of distinct groups))`` of them, drawn with
    ``seed`` from the distinct groups in first-seen order. When every row is its own group this holds out the
    same rows as shuffling the row positions with the same seed."""
    distinct = list(dict.fromkeys(groups))
    order = list(range(len(distinct)))
    random.Random(seed).shuffle(order)
    held_out = max(1, round(fraction * len(distinct)))
    return {distinct[i] for i in order[:held_out]}
