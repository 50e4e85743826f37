"""Statistics of a batch of responses that expose reward hacking: lexical diversity, empty answers, and how
much of the score length alone explains.

Shapes: ``responses (b, t)`` token ids, ``mask (b, t)`` bool, True on each response's tokens through its stop
token (as :func:`rlhf_lightning.ops.truncate_after_stop` returns them); ``ended (b,)`` bool.
"""

from __future__ import annotations

import torch


def content_mask(mask: torch.Tensor, ended: torch.Tensor) -> torch.Tensor:
    """``(b, t)`` the response tokens without the closing stop token of the responses that ended."""
    last = mask.long().sum(-1, keepdim=True) - 1
    closing = torch.zeros_like(mask).scatter(-1, last.clamp(min=0), True) & ended.unsqueeze(-1) & mask
    return mask & ~closing


def distinct_n(responses: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation
    Models"): the number of distinct n-grams over all responses divided by the number of n-grams, in
    ``[0, 1]``; 0 when no response has ``n`` tokens. An n-gram lies within one response's masked tokens."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams: list[tuple[int, ...]] = []
    for row, valid in zip(responses.tolist(), mask.tolist()):
        tokens = [token for token, keep in zip(row, valid) if keep]
        grams += [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return torch.tensor(len(set(grams)) / len(grams) if grams else 0.0)


def empty_responses(mask: torch.Tensor, ended: torch.Tensor) -> torch.Tensor:
    """``(b,)`` bool: the responses that hold no token besides their closing stop token (an empty turn)."""
    return content_mask(mask, ended).sum(-1) == 0


def empty_fraction(mask: torch.Tensor, ended: torch.Tensor) -> torch.Tensor:
    """Share of responses that ended without a single token before their stop token."""
    return empty_responses(mask, ended).float().mean()


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two ``(b,)`` tensors; 0 when either is constant (or ``b < 2``)."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = (x.pow(2).sum() * y.pow(2).sum()).sqrt()
    return (x * y).sum() / denominator if denominator > 0 else torch.zeros((), dtype=torch.float64)
