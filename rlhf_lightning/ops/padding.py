"""Batching token lists: one padding helper per side. Masks always come from the lengths, never from
comparing ids with the pad id (a pad equal to EOS would hide every real EOS)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _pad(sequences: Sequence[Sequence[int]], pad_id: int, left: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, seq in enumerate(sequences):
        n = len(seq)
        if n:
            span = slice(longest - n, longest) if left else slice(0, n)
            ids[i, span] = torch.as_tensor(seq, dtype=torch.long)
            mask[i, span] = 1
    return ids.to(device), mask.to(device)


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as ``(ids, attention_mask)``, both ``(b, t)`` with ``t`` the longest length, padded on the
    left (prompts for generation: every row's next token goes in the same column)."""
    return _pad(sequences, pad_id, True, device)


def right_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as ``(ids, attention_mask)``, both ``(b, t)``, padded on the right (training batches)."""
    return _pad(sequences, pad_id, False, device)
