"""Several roles on one base model: named peft adapters, switched in place, and the forward passes of PPO.

PPO needs four models (policy, reference, value, reward). On one GPU they share a single frozen, optionally
4-bit base and differ only by LoRA adapters and small heads. A :class:`Role` names the model that holds its
weights (usually the shared ``PeftModel``), its adapter (``None``: the base alone, adapters disabled) and
its scalar head.

peft's ``set_adapter`` and ``disable_adapter`` change ``requires_grad``: they freeze every adapter but the
active one and unfreeze the active one even if it was loaded frozen. :func:`use_adapter` puts every flag
back, so the trainable set (policy, value, value head) is the same before, during and after a switch.

With gradient checkpointing, the backward pass re-runs each layer's forward with whatever adapter is active
at that moment, so a loss must be back-propagated while its own adapter is still active.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from rlhf_lightning.models.config import ModelConfig
from rlhf_lightning.models.embedded import resolve_model_path
from rlhf_lightning.models.generation import sample_responses
from rlhf_lightning.models.loading import (
    decoder_and_head,
    final_hidden_states,
    is_peft,
    load_causal_lm,
    output_head,
)
from rlhf_lightning.models.reward import ScalarHead, hidden_size_of, last_token_scores, load_head
from rlhf_lightning.models.run_folder import RunFolder
from rlhf_lightning.ops import token_logprobs_from_hidden, truncate_after_stop


@dataclass
class Role:
    """The weights one PPO role computes with."""

    model: nn.Module
    """A ``peft.PeftModel`` (often shared with other roles) or a plain model."""
    adapter: str | None
    """The peft adapter to activate; ``None`` runs the base model with every adapter disabled."""
    head: ScalarHead | None = None
    """The scalar head of a value or reward role."""


def _restore(flags: list[tuple[nn.Parameter, bool]]) -> None:
    for p, flag in flags:
        if p.requires_grad != flag:
            p.requires_grad_(flag)


@contextmanager
def use_adapter(model: nn.Module, adapter: str | None) -> Iterator[nn.Module]:
    """Run the enclosed code with ``adapter`` active (``None``: adapters disabled), keeping every
    parameter's ``requires_grad`` as it was; the previously active adapter is restored on exit."""
    if not is_peft(model):
        if adapter is not None:
            raise ValueError(f"adapter {adapter!r} requested from a model without adapters")
        yield model
        return
    flags = [(p, p.requires_grad) for p in model.parameters()]
    previous = model.active_adapter
    try:
        if adapter is None:
            with model.disable_adapter():
                _restore(flags)
                yield model
        else:
            if adapter not in model.peft_config:
                raise ValueError(f"no adapter named {adapter!r}; loaded: {sorted(model.peft_config)}")
            if adapter != previous:
                model.set_adapter(adapter)
            _restore(flags)
            yield model
    finally:
        if adapter is not None and adapter != previous:
            model.set_adapter(previous)
        _restore(flags)


def _mergeable_layers(model: nn.Module, adapter: str) -> list[nn.Module] | None:
    """The LoRA layers of ``adapter`` if everything ``adapter`` changes in the model is a plain LoRA on a
    floating-point ``nn.Linear`` (no quantized base, no DoRA); ``None`` otherwise. A part that cannot be folded
    into a base weight (a trained module copy from ``modules_to_save``, LoRA on an embedding, trainable token
    rows) would be lost when every adapter is disabled around the merged weights."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # peft is loaded: the model is a PeftModel
    from peft.utils.other import AuxiliaryTrainingWrapper

    layers = []
    for module in model.modules():
        if not isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            continue
        if not any(adapter in getattr(module, name, {}) for name in module.adapter_layer_names):
            continue
        if isinstance(module, AuxiliaryTrainingWrapper) or adapter not in getattr(module, "lora_A", {}):
            return None
        base = module.get_base_layer()
        if type(base) is not nn.Linear or not base.weight.dtype.is_floating_point:
            return None
        if getattr(module, "use_dora", {}).get(adapter, False) or getattr(module, "fan_in_fan_out", False):
            return None
        layers.append(module)
    return layers


@contextmanager
def merged_adapter(model: nn.Module, adapter: str | None) -> Iterator[nn.Module]:
    """Run the enclosed (gradient-free) code with ``adapter`` folded into the base weights and every adapter
    disabled: generation then runs plain linear layers, without a LoRA detour per layer and token. The base
    weights are new tensors ``W + scale * B @ A`` for the duration and the original tensors afterwards
    (bit-for-bit: nothing is subtracted back). Without a mergeable adapter (none, a quantized base, DoRA) it
    is :func:`use_adapter`. Costs one extra copy of the adapted weights while active."""
    layers = _mergeable_layers(model, adapter) if adapter is not None and is_peft(model) else None
    if not layers:
        with use_adapter(model, adapter) as m:
            yield m
        return
    saved = []
    try:
        with torch.no_grad():
            for layer in layers:
                weight = layer.get_base_layer().weight
                saved.append((weight, weight.data))
                weight.data = weight.data + layer.get_delta_weight(adapter).to(weight.dtype)
        with use_adapter(model, None) as m:
            yield m
    finally:
        for weight, data in saved:
            weight.data = data


def active(role: Role):
    """``with active(role):`` runs the enclosed passes with ``role``'s adapter (:func:`use_adapter`)."""
    return use_adapter(role.model, role.adapter)


def role_hidden_states(role: Role, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(b, t, d)`` final hidden states of ``role`` (call inside :func:`use_adapter` when gradients flow)."""
    decoder, _ = decoder_and_head(role.model)
    return final_hidden_states(decoder, input_ids, attention_mask)


def response_logprobs(
    role: Role,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
    chunk_size: int = 1024,
    with_entropy: bool = False,
):
    """Log-probs ``(b, r)`` (and entropies) of the response tokens of ``sequences = [prompt (p) | response (r)]``
    under ``role``'s model, at ``logits / temperature``, chunk by chunk (a ``TokenLogProbs``). Call it inside
    ``with active(role):``; gradients flow when enabled.

    The hidden state at position ``p - 1 + i`` predicts response token ``i``.
    """
    hidden = role_hidden_states(role, sequences, attention_mask)
    head = output_head(role.model)  # read with the role's adapter active: its trained head copy, if any
    r = response_mask.shape[1]
    p = sequences.shape[1] - r
    return token_logprobs_from_hidden(
        hidden[:, p - 1 : -1],
        head.weight,
        sequences[:, p:],
        bias=head.bias,
        logit_scale=head.logit_scale,
        mask=response_mask,
        temperature=temperature,
        chunk_size=chunk_size,
        with_entropy=with_entropy,
    )


@torch.no_grad()
def next_token_logprobs(
    role: Role, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_ids: list[int]
) -> torch.Tensor:
    """Log-probs ``(b, len(token_ids))`` of ``token_ids`` as the next token after left-padded ``input_ids``
    ``(b, t)`` under ``role``: the log-softmax is taken over the whole vocabulary at the last position only."""
    with active(role):
        hidden = role_hidden_states(role, input_ids, attention_mask)[:, -1]
        head = output_head(role.model)
    logits = hidden.float() @ head.weight.float().T + (0 if head.bias is None else head.bias.float())
    return torch.log_softmax(head.logit_scale * logits, dim=-1)[:, token_ids]


def response_values(head: ScalarHead, hidden: torch.Tensor, response_length: int) -> torch.Tensor:
    """Values ``(b, r)``: the value of the state before each response token (the prefix it is sampled from)."""
    return head(hidden[:, -response_length - 1 : -1])


@torch.no_grad()
def sample_from_role(
    role: Role,
    prompts: torch.Tensor,
    prompt_mask: torch.Tensor,
    config,
    eos_token_ids: list[int],
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Responses of ``role`` to left-padded prompts ``(b, p)``, cut after their first EOS.

    Returns ``(sequences (b, p + r), attention_mask, response_mask (b, r) bool, ended (b,) bool)``.
    ``config`` is a :class:`~rlhf_lightning.models.generation.GenerationConfig`. The adapter is merged into
    the base for the duration when it can be (:func:`merged_adapter`).
    """
    with merged_adapter(role.model, role.adapter):
        responses = sample_responses(role.model, prompts, prompt_mask, config, eos_token_ids, pad_token_id)
    responses, mask, ended = truncate_after_stop(responses, eos_token_ids, pad_token_id)
    sequences = torch.cat([prompts, responses], dim=1)
    attention_mask = torch.cat([prompt_mask, mask.long()], dim=1)
    return sequences, attention_mask, mask, ended


def role_values(
    role: Role, sequences: torch.Tensor, attention_mask: torch.Tensor, response_length: int
) -> torch.Tensor:
    """Values ``(b, r)`` of a value role (:func:`response_values`) with its adapter active."""
    with active(role):
        return response_values(role.head, role_hidden_states(role, sequences, attention_mask), response_length)


@torch.no_grad()
def role_scores(role: Role, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scores ``(b,)`` of a reward role, read at each sequence's last real token, in float32."""
    if role.head is None:
        raise ValueError("scoring needs a role with a scalar head (a reward model)")
    with active(role):
        hidden = role_hidden_states(role, sequences, attention_mask)
        return last_token_scores(role.head, hidden, attention_mask).float()


@torch.no_grad()
def sequence_kl(
    role: Role,
    reference: Role,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """KL ``(b,)`` of each response of ``role`` to ``reference``: the k1 estimate ``log p - log q`` summed over
    the response tokens, at ``logits / temperature``."""
    logprobs = []
    for side in (role, reference):
        with active(side):
            logprobs.append(response_logprobs(side, sequences, attention_mask, response_mask, temperature, chunk_size))
    return ((logprobs[0].logprobs - logprobs[1].logprobs) * response_mask).sum(-1)


class RoleLoader:
    """Loads policies and reward models as :class:`Role` s; adapters on the same base share one copy of it."""

    def __init__(self, model_config: ModelConfig, device: torch.device | str) -> None:
        self.model_config, self.device = model_config, device
        self._bases: dict[str, torch.nn.Module] = {}

    def _base(self, name_or_path: str, shared: bool) -> torch.nn.Module:
        key = resolve_model_path(name_or_path)
        if shared and key in self._bases:
            return self._bases[key]
        cfg = dataclasses.replace(self.model_config, name_or_path=name_or_path, adapter=None)
        model = load_causal_lm(cfg, lora=None, device=self.device, trainable=False).to(self.device).eval()
        if shared:
            self._bases[key] = model
        return model

    def load(self, path: str, name: str) -> Role:
        """A policy (``head`` None) or, for a reward run's folder, a reward model (with its score head)."""
        folder = RunFolder(path)
        if folder.adapter is None:
            model = self._base(folder.base_model, shared=False)
            role = Role(model, None)
        else:
            base = self._base(folder.base_model, shared=True)
            key = resolve_model_path(folder.base_model)
            if is_peft(base):
                base.load_adapter(folder.adapter, adapter_name=name, is_trainable=False)
            else:
                from peft import PeftModel  # on first use, as in models.loading

                base = PeftModel.from_pretrained(base, folder.adapter, adapter_name=name, is_trainable=False)
                self._bases[key] = base
            base.eval()
            role = Role(base, name)
        if folder.stage == "reward":
            role.head = load_head(path, hidden_size_of(role.model)).to(self.device).eval()
        return role
