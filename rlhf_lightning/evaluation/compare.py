"""Comparing two policies on the same prompts: reward-model score, win rate, KL to a reference, response
length, the "gold" score of a known preference when there is one, and the texts side by side.

One definition serves the PPO stage's own evaluation and the ``rlhf-lightning evaluate`` command, so the two
give identical numbers for the same prompts, seed and batch size:

- each side's score is the reward model's raw score (no clipping or whitening, which would rescale each
  side by its own statistics); the win rate compares raw scores, ties counting half;
- the missing-EOS penalty PPO would apply to a response that never ended (or was empty) is its own column,
  ``{side}_eos_penalty`` (0 for a response that ended), not part of the score; ``{side}_empty`` marks an
  empty answer (a stop token first);
- the KL of a side to the reference is measured at the temperature its responses were sampled at (1 for
  greedy responses);
- batch ``i`` samples from a generator seeded with ``seed + i``, reseeded for each side: both sides draw the
  same random numbers (common random numbers: a lower-variance comparison), and the reference's answers are
  the same at every evaluation of a run, a fixed baseline for the over-optimisation curve.

The PPO stage evaluates its policy against the SFT reference with :func:`compare_batch`; the
``rlhf-lightning evaluate`` command (:mod:`rlhf_lightning.commands.evaluate`) compares any two policies.
Reports (tables, the over-optimisation curve) are in :mod:`rlhf_lightning.evaluation.report`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from rlhf_lightning.models.generation import seeded
from rlhf_lightning.models.score_function import ScoreFunction
from rlhf_lightning.ops import empty_responses, penalize_unfinished

Sampler = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
"""``(prompts, prompt_mask) -> (sequences, attention_mask, response_mask, ended)``."""


def win(a: float, b: float) -> float:
    """1 if ``a`` beats ``b``, 0.5 for a tie, else 0."""
    return 1.0 if a > b else 0.5 if a == b else 0.0


def _mean(values) -> float:
    values = list(values)
    return sum(values) / max(len(values), 1)


def kl_temperature(temperature: float) -> float:
    """The temperature KL is measured at for responses sampled at ``temperature`` (1 for greedy ones)."""
    return temperature if temperature > 0 else 1.0


def eos_penalty(
    scores: torch.Tensor,
    ended: torch.Tensor,
    penalty: float | None,
    mode: Literal["subtract", "replace"],
    empty: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(b,)`` the change PPO's missing-EOS penalty makes to each raw score: ``-penalty`` (``subtract``) or
    ``-penalty - score`` (``replace``) for a response that never ended, and for an empty one (nothing before
    its stop token) where ``empty`` ``(b,)`` is given; 0 for the others or when the penalty is off."""
    if penalty is None:
        return torch.zeros_like(scores)
    finished = ended if empty is None else ended & ~empty
    return penalize_unfinished(scores, finished, -penalty if mode == "replace" else penalty, mode) - scores


@torch.no_grad()
def compare_batch(
    prompts: torch.Tensor,
    prompt_mask: torch.Tensor,
    samplers: dict[str, Sampler],
    score: Callable[[torch.Tensor, torch.Tensor, int, list[str]], torch.Tensor],
    tokenizer,
    kl: Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | dict[str, torch.Tensor]] | None = None,
    kl_sides: Sequence[str] = (),
    gold_fn: ScoreFunction | None = None,
    penalty: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    prompt_texts: Sequence[str] | None = None,
    seed: int | None = None,
) -> list[dict]:
    """One record per prompt with each side's response, raw score, missing-EOS penalty, length, whether it
    ended, and for the sides in ``kl_sides`` the summed KL of its response to the reference; ``gold_fn``
    adds ``{side}_gold``.

    ``score(sequences, attention_mask, prompt_length, prompt_texts)`` gives the raw scores ``(b,)``;
    ``penalty(scores, ended, empty)`` the missing-EOS penalty ``(b,)`` (see :func:`eos_penalty`);
    ``kl(side, sequences, attention_mask, response_mask)`` the KL ``(b,)`` of that side's responses, or a dict of
    such KLs to several models by key suffix (``{"": to the reference, "_previous": ...}`` gives ``{side}_kl``
    and ``{side}_kl_previous``).
    ``prompt_texts`` are the prompts as the user wrote them (a text prompt's text, a conversation's last user
    message); by default the prompt tokens are decoded. The records show them, and ``score`` (for a reward
    function) and ``gold_fn`` get them, as a PPO reward function does. With ``seed``, each side samples from a
    generator seeded with it (the global RNG is left as it was), so every side draws the same random numbers.
    """
    p = prompts.shape[1]
    decode = tokenizer.decode
    if prompt_texts is None:
        prompt_texts = [decode(ids[m.bool()], skip_special_tokens=True) for ids, m in zip(prompts, prompt_mask)]
    texts = list(prompt_texts)
    records = [{"prompt": text} for text in texts]
    for side, sample in samplers.items():
        with seeded(seed, prompts.device) if seed is not None else contextlib.nullcontext():
            sequences, attention_mask, mask, ended = sample(prompts, prompt_mask)
        scores = score(sequences, attention_mask, p, texts)
        empty = empty_responses(mask, ended)
        penalties = penalty(scores, ended, empty) if penalty is not None else torch.zeros_like(scores)
        kls = kl(side, sequences, attention_mask, mask) if kl is not None and side in kl_sides else None
        if isinstance(kls, torch.Tensor):
            kls = {"": kls}
        for i, record in enumerate(records):
            record[side] = decode(sequences[i, p:][mask[i]], skip_special_tokens=True)
            record[f"{side}_score"] = scores[i].item()
            record[f"{side}_eos_penalty"] = penalties[i].item()
            for suffix, values in (kls or {}).items():
                record[f"{side}_kl{suffix}"] = values[i].item()
            record[f"{side}_length"] = int(mask[i].sum())
            record[f"{side}_ended"] = bool(ended[i])
            record[f"{side}_empty"] = bool(empty[i])
    if gold_fn is not None:
        for side in samplers:
            gold = gold_fn(texts, [r[side] for r in records])
            for record, g in zip(records, gold.tolist()):
                record[f"{side}_gold"] = g
    return records


def summarize(records: list[dict], a: str, b: str) -> dict[str, float]:
    """Means over the records; ``win_rate`` is ``a`` over ``b`` by score (ties count half), and
    ``gold_win_rate`` the same by the gold score."""
    summary = {
        f"{a}_score": _mean(r[f"{a}_score"] for r in records),
        f"{b}_score": _mean(r[f"{b}_score"] for r in records),
        "win_rate": _mean(win(r[f"{a}_score"], r[f"{b}_score"]) for r in records),
    }
    for side in (a, b):
        for key in [k for k in (records[0] if records else {}) if k.startswith(f"{side}_kl")]:
            summary[key] = _mean(r[key] for r in records)
    for side in (a, b):
        summary[f"{side}_length"] = _mean(r[f"{side}_length"] for r in records)
        summary[f"{side}_ended"] = _mean(r[f"{side}_ended"] for r in records)
        summary[f"{side}_empty"] = _mean(r.get(f"{side}_empty", False) for r in records)
        summary[f"{side}_eos_penalty"] = _mean(r[f"{side}_eos_penalty"] for r in records)
    if records and f"{a}_gold" in records[0]:
        summary[f"gold_{a}"] = _mean(r[f"{a}_gold"] for r in records)
        summary[f"gold_{b}"] = _mean(r[f"{b}_gold"] for r in records)
        summary["gold_win_rate"] = _mean(win(r[f"{a}_gold"], r[f"{b}_gold"]) for r in records)
    return summary
