"""Sampling responses from a (possibly adapter-wrapped) causal LM for a list of tokenized prompts.

Responses are drawn from exactly ``softmax(logits / T)`` (truncated by top-k/top-p only when asked): the
model's own ``generation_config.json`` (repetition penalty, minimum length, n-gram blocking, bad words, ...)
is set aside while sampling, because every log-prob PPO computes assumes that distribution. A response ends
at the first of its stop tokens (:func:`rlhf_lightning.data.chat.stop_token_ids`, given
:func:`generation_eos_ids`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
import transformers
from torch import nn

from rlhf_lightning.models.loading import unwrap_causal_lm
from rlhf_lightning.ops import left_pad


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
    stop_tokens: list[str] = field(default_factory=list)
    """More tokens that end a response (each exactly one token, e.g. ``"<|eot_id|>"``), on top of the
    tokenizer's EOS, the EOS ids of the model's generation config and the chat template's end-of-turn token."""
    cache: Literal["dynamic", "static"] = "dynamic"
    """The KV cache while sampling: ``dynamic`` grows it token by token; ``static`` allocates it once for
    prompt + ``max_new_tokens`` (fixed shapes: fewer allocations, and what CUDA graphs and ``torch.compile``
    need on a GPU)."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1: off), got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.cache not in ("dynamic", "static"):
            raise ValueError(f"cache must be 'dynamic' or 'static', got {self.cache!r}")


def generation_eos_ids(model: nn.Module) -> list[int]:
    """The EOS id(s) of the model's own generation config (Llama-3 lists several; none is an empty list)."""
    configured = getattr(unwrap_causal_lm(model).generation_config, "eos_token_id", None)
    return [configured] if isinstance(configured, int) else list(configured or [])


def sampling_config(config: GenerationConfig, stop_ids: Sequence[int], pad_token_id: int):
    """A complete ``transformers.GenerationConfig`` for :func:`sample_responses`: temperature (and top-k/top-p
    when set) and nothing else; greedy when ``config.temperature`` is 0."""
    sampling = config.temperature > 0
    kwargs = dict(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p) if sampling else {}
    return transformers.GenerationConfig(
        max_new_tokens=config.max_new_tokens,
        do_sample=sampling,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_token_id,
        use_cache=True,
        cache_implementation="static" if config.cache == "static" else None,
        **kwargs,
    )


@contextmanager
def model_defaults_set_aside(model: nn.Module) -> Iterator[None]:
    """Run ``generate`` with a blank model generation config, so that only what the caller passes applies
    (``generate`` fills every field the caller leaves unset from the model's ``generation_config.json``)."""
    causal_lm = unwrap_causal_lm(model)
    saved = causal_lm.generation_config
    causal_lm.generation_config = transformers.GenerationConfig()
    try:
        yield
    finally:
        causal_lm.generation_config = saved


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
) -> torch.Tensor:
    """Sample responses ``(b, r)`` to left-padded prompts ``(b, p)`` from ``softmax(logits / T)``, with the
    KV cache, in eval mode; ``eos_token_ids`` are the stop tokens.

    Rows that finished early are filled with ``pad_token_id`` after their stop token. The model's mode and
    generation config are restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        with model_defaults_set_aside(model):
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=sampling_config(config, eos_token_ids, pad_token_id),
            )
    finally:
        model.train(was_training)
    return out[:, input_ids.shape[1] :]


@contextmanager
def seeded(seed: int, device: torch.device | str) -> Iterator[None]:
    """Draw from a generator seeded with ``seed`` inside the block, and leave the global RNG (CPU and
    ``device``) exactly as it was: sample tables and evaluations never change a training run."""
    device = torch.device(device)
    devices = [] if device.type != "cuda" else [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield


def generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
) -> list[list[int]]:
    """Generate one response per prompt; each response stops after (and includes) its first stop token
    (``eos_token_ids``, usually :func:`rlhf_lightning.data.chat.stop_token_ids`)."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_token_id, device)
    out = sample_responses(model, ids, mask, config, eos_token_ids, pad_token_id)
    responses = []
    stops = set(eos_token_ids)
    for row in out.tolist():
        end = next((i + 1 for i, tok in enumerate(row) if tok in stops), len(row))
        responses.append(row[:end])
    return responses
