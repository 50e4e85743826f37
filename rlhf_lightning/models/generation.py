"""Sampling responses from a (possibly adapter-wrapped) causal LM for a list of tokenized prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class GenerationConfig:
    """How responses are generated for sample tables and rollouts."""

    max_new_tokens: int = 64
    """Longest response, in tokens."""
    temperature: float = 0.7
    """Sampling temperature; 0 means greedy decoding."""
    top_k: int = 0
    """0 disables top-k. RLHF rollouts must sample from the full distribution (truncation biases KL)."""
    top_p: float = 1.0
    """1.0 disables nucleus sampling, for the same reason."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"):
    """Left-pad token lists into ``(ids, attention_mask)`` of shape ``(b, t)``; the mask comes from lengths."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq):
            ids[i, longest - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
            mask[i, longest - len(seq) :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
) -> torch.Tensor:
    """Sample responses ``(b, r)`` to left-padded prompts ``(b, p)``, with the KV cache, in eval mode.

    Rows that finished early are filled with ``pad_token_id`` after their stop token. The model's mode is
    restored afterwards.
    """
    was_training = model.training
    model.eval()
    sampling = config.temperature > 0
    kwargs = dict(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p) if sampling else {}
    try:
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=config.max_new_tokens,
            do_sample=sampling,
            eos_token_id=list(eos_token_ids),
            pad_token_id=pad_token_id,
            use_cache=True,
            **kwargs,
        )
    finally:
        model.train(was_training)
    return out[:, input_ids.shape[1] :]


def generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
) -> list[list[int]]:
    """Generate one response per prompt; each response stops after (and includes) its first EOS."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_token_id, device)
    out = sample_responses(model, ids, mask, config, eos_token_ids, pad_token_id)
    responses = []
    stops = set(eos_token_ids)
    for row in out.tolist():
        end = next((i + 1 for i, tok in enumerate(row) if tok in stops), len(row))
        responses.append(row[:end])
    return responses
