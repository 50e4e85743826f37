"""Bradley-Terry preference loss over pairs grouped by prompt, and last-token indexing.

A comparison ``chosen > rejected`` is one pair. A ranking of K responses to one prompt contributes all
K(K-1)/2 ordered pairs, which are averaged within their prompt before averaging over prompts
(InstructGPT), so a prompt ranked by many responses weighs the same as one pair and no response is
over-fitted through repetition.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class PreferenceLoss(NamedTuple):
    loss: torch.Tensor
    """Scalar: weighted mean of the pair losses (+ centering)."""
    pair_weights: torch.Tensor
    """``(p,)``: each pair's weight, ``1 / (pairs in its prompt * prompts)``; they sum to 1."""
    score_diff: torch.Tensor
    """``(p,)``: ``score(better) - score(worse)``, detached."""


def pair_weights(group: torch.Tensor) -> torch.Tensor:
    """Weights ``(p,)`` that average pairs within each group, then groups equally. ``group (p,)`` long."""
    counts = torch.bincount(group)
    num_groups = (counts > 0).sum()
    return 1.0 / (counts[group].to(torch.float32) * num_groups)


def preference_loss(
    scores: torch.Tensor,
    better: torch.Tensor,
    worse: torch.Tensor,
    group: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> PreferenceLoss:
    """``-log sigmoid(s_better - s_worse - margin)``, averaged within prompts, then over prompts.

    Shapes: ``scores (n,)`` one score per sequence; ``better``, ``worse``, ``group`` ``(p,)`` long: for
    each pair, the index of its preferred and dispreferred sequence in ``scores`` and the prompt it
    belongs to; ``margin (p,)`` optional (how much better ``better`` must be, e.g. from rating gaps).
    ``center_coef`` adds ``c * (s_better + s_worse)^2`` per pair, which keeps scores centred on 0.
    """
    weights = pair_weights(group)
    diff = scores[better] - scores[worse]
    logits = diff - margin if margin is not None else diff
    loss = (weights * -F.logsigmoid(logits)).sum()
    if center_coef:
        loss = loss + center_coef * (weights * (scores[better] + scores[worse]).pow(2)).sum()
    return PreferenceLoss(loss, weights, diff.detach())


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index ``(b,)`` of the last real token of each row, for left, right or no padding.

    ``attention_mask (b, t)``: 1 (True) on real tokens. A row without real tokens gets index 0.
    """
    t = attention_mask.shape[-1]
    positions = torch.arange(t, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, torch.zeros_like(positions)).amax(-1)
