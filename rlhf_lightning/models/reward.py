"""A causal LM backbone with a scalar head: the reward model (and, in PPO, the value model).

The score of a sequence is the head applied to the final hidden state of its last real token, found from
the attention mask, so left- and right-padded batches give the same scores. The LM head is never used.

A trained reward model is a folder: the backbone's adapter in peft format (or a full model), the head in
``score_head.safetensors``, the tokenizer, and ``rlhf_lightning.json`` naming the base model.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rlhf_lightning.models.config import ModelConfig
from rlhf_lightning.models.loading import (
    decoder_and_head,
    final_hidden_states,
    load_causal_lm,
    load_tokenizer,
    unwrap_causal_lm,
)
from rlhf_lightning.models.run_folder import HEAD_FILE, RunFolder
from rlhf_lightning.ops import last_token_index, left_pad, shared_prefix_attention_mask


class ScalarHead(nn.Module):
    """``hidden (.., d) -> score (..)`` in float32: a linear layer with a bias, initialised with weights
    drawn from ``N(0, init_std^2)`` and bias 0.

    Args:
        hidden_size: ``d``, the backbone's hidden size.
        init_std: Standard deviation of the initial weights; ``None``: ``1/sqrt(d+1)`` (Stiennon et al. 2020,
            "Learning to summarize from human feedback", reward head). 0 starts every score at 0.
    """

    def __init__(self, hidden_size: int, init_std: float | None = None) -> None:
        super().__init__()
        if init_std is not None and init_std < 0:
            raise ValueError(f"the score head's init_std must be >= 0, got {init_std}")
        self.linear = nn.Linear(hidden_size, 1, dtype=torch.float32)
        std = 1.0 / math.sqrt(hidden_size + 1) if init_std is None else init_std
        if std > 0:
            nn.init.normal_(self.linear.weight, std=std)
        else:
            nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


def hidden_size_of(model: nn.Module) -> int:
    decoder, _ = decoder_and_head(model)
    return decoder.config.hidden_size


def sequence_scores(
    model: nn.Module, head: ScalarHead, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Score ``(b,)`` of each sequence at its last real token."""
    decoder, _ = decoder_and_head(model)
    return last_token_scores(head, final_hidden_states(decoder, input_ids, attention_mask), attention_mask)


def packed_sequence_scores(
    model: nn.Module,
    head: ScalarHead,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    segments: torch.Tensor,
    last: torch.Tensor,
) -> torch.Tensor:
    """Scores ``(n,)`` of sequences packed with a shared prefix (:func:`~rlhf_lightning.ops.pack_shared_prefix`:
    ``(g, t)`` ids, positions and segments, ``last (n, 2)``), each read at its own last token. Every token
    attends only to what it would in its own sequence (:func:`~rlhf_lightning.ops.shared_prefix_attention_mask`),
    so the scores are those of :func:`sequence_scores` on the sequences one by one; the prompt is computed once
    per group. Needs an attention that takes a 4D mask (``sdpa``, ``eager``); raises ``ValueError`` otherwise."""
    decoder, _ = decoder_and_head(model)
    allowed = shared_prefix_attention_mask(segments)
    implementation = getattr(unwrap_causal_lm(model).config, "_attn_implementation", "sdpa")
    if implementation == "eager":
        dtype = next(decoder.parameters()).dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)
    elif implementation == "sdpa":
        mask = allowed
    else:
        raise ValueError(f"shared-prompt packing needs sdpa or eager attention, not {implementation}")
    hidden = decoder(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
    return head(hidden.last_hidden_state[last[:, 0], last[:, 1]])


def last_token_scores(head: ScalarHead, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scores ``(b,)``: ``head`` applied to ``hidden`` ``(b, t, d)`` at each sequence's last real token (the EOS
    of an ended response), found from ``attention_mask`` ``(b, t)``, so any padding side gives the same."""
    last = last_token_index(attention_mask)
    return head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])


@torch.no_grad()
def score_sequences(
    model: nn.Module, head: ScalarHead, sequences: list[list[int]], pad_id: int, batch_size: int = 16
) -> list[float]:
    """Scores of token sequences, in their order, batched by length (little padding), in eval mode."""
    device = head.linear.weight.device
    was_training = model.training
    model.eval()
    scores = [0.0] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = left_pad([sequences[i] for i in chunk], pad_id, device)
        for i, score in zip(chunk, sequence_scores(model, head, ids, mask).tolist()):
            scores[i] = score
    model.train(was_training)
    return scores


def save_head(head: ScalarHead, folder: str | Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(Path(folder) / HEAD_FILE))


def load_head(folder: str | Path, hidden_size: int) -> ScalarHead:
    path = Path(folder) / HEAD_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no {HEAD_FILE}: it is not a reward model folder")
    head = ScalarHead(hidden_size)
    head.load_state_dict(load_file(str(path)))
    return head


class RewardModel(nn.Module):
    """Backbone + head, for scoring outside of training (``rlhf-lightning score``, PPO)."""

    def __init__(self, model: nn.Module, head: ScalarHead, tokenizer) -> None:
        super().__init__()
        self.model, self.head, self.tokenizer = model, head, tokenizer

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return sequence_scores(self.model, self.head, input_ids, attention_mask)

    @classmethod
    def from_folder(
        cls, folder: str | Path, model_config: ModelConfig | None = None, device: torch.device | str = "cpu"
    ) -> RewardModel:
        """Load a reward model folder written by the reward stage. ``model_config`` may change how the
        base is loaded (dtype, quantization); its ``name_or_path`` and ``adapter`` come from the folder."""
        run = RunFolder(folder)
        run.require_stage("reward", what="a reward model")
        cfg = dataclasses.replace(model_config or ModelConfig(), name_or_path=run.base_model, adapter=run.adapter)
        model = load_causal_lm(cfg, lora=None, device=device, trainable=False).to(device).eval()
        head = load_head(folder, hidden_size_of(model)).to(device).eval()
        return cls(model, head, load_tokenizer(str(folder)))
