"""Batching token lists: one padding helper per side. Masks always come from the lengths, never from
comparing ids with the pad id (a pad equal to EOS would hide every real EOS)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

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


def nonpad_columns(attention_mask: torch.Tensor) -> slice:
    """The columns of ``attention_mask (b, t)`` between the first and the last that holds a real token in
    any row: slicing a batch with it drops the columns that are padding in every row (left-padded prompts
    and right-padded responses keep their alignment). An all-padding mask gives ``slice(0, 0)``."""
    real = attention_mask.bool().any(0).nonzero()
    if len(real) == 0:
        return slice(0, 0)
    return slice(int(real[0]), int(real[-1]) + 1)


class SharedPrefixBatch(NamedTuple):
    """Groups of sequences packed one row per group: the prefix the group's sequences share, once, then what
    follows it in each sequence, one segment after another. ``(g, t)`` each:"""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    """A segment continues the prefix's positions: every token sits where it sits in its own sequence."""
    segments: torch.Tensor
    """0 on the prefix, ``k`` on the ``k``-th sequence's own tokens (from 1), -1 on padding."""
    last: torch.Tensor
    """``(n, 2)``: (row, column) of each sequence's last token, sequences in the order given."""


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens every sequence starts with, at most the shortest length minus 1 (each keeps a token of its own)."""
    shortest = min(len(s) for s in sequences)
    n = 0
    while n < shortest - 1 and all(s[n] == sequences[0][n] for s in sequences[1:]):
        n += 1
    return n


def pack_shared_prefix(groups: Sequence[Sequence[Sequence[int]]], pad_id: int) -> SharedPrefixBatch:
    """Pack each group (the responses to one prompt, each prompt + response) into one right-padded row:
    ``[shared prefix | rest of sequence 1 | rest of sequence 2 | ...]``. With
    :func:`shared_prefix_attention_mask` a causal LM computes every token exactly as in its own sequence,
    and the prefix (the prompt) once per group instead of once per sequence. A group of one sequence is the
    sequence itself."""
    rows, last = [], []
    for r, group in enumerate(groups):
        if not group or any(len(s) == 0 for s in group):
            raise ValueError("every group needs sequences of at least one token")
        p = shared_prefix_length(group) if len(group) > 1 else len(group[0]) - 1
        ids, pos, seg = list(group[0][:p]), list(range(p)), [0] * p
        for k, seq in enumerate(group, start=1):
            rest = seq[p:]
            ids += rest
            pos += range(p, len(seq))
            seg += [k] * len(rest)
            last.append((r, len(ids) - 1))
        rows.append((ids, pos, seg))
    width = max(len(ids) for ids, _, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segment_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, (ids, pos, seg) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        position_ids[r, : len(pos)] = torch.tensor(pos)
        segment_ids[r, : len(seg)] = torch.tensor(seg)
    return SharedPrefixBatch(input_ids, position_ids, segment_ids, torch.tensor(last, dtype=torch.long))


def shared_prefix_attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """``(g, 1, t, t)`` bool, True where query ``i`` may attend to key ``j``: causal, and a sequence's own
    tokens see the prefix and themselves, never another sequence's. A padding position sees itself only (no
    row is all False, so no softmax over nothing)."""
    t = segments.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    query, key = segments[:, :, None], segments[:, None, :]
    allowed = causal & (key >= 0) & (query >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(t, dtype=torch.bool, device=segments.device)
    return allowed[:, None]
