"""The four PPO roles on one base model: policy (trained, from the SFT adapter), reference (the SFT adapter,
frozen), reward (adapter + score head, frozen) and value (from the reward adapter and head, trained).

Roles are named ``policy``, ``reference``, ``reward`` and ``value`` everywhere; :data:`ADAPTERS` gives the
peft adapter each uses on the shared base. The policy's adapter is peft's ``default``, so that the final
folder holds it at its top, loadable like an SFT adapter.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from rlhf_lightning.models.adapters import Role
from rlhf_lightning.models.config import LoraConfig, ModelConfig
from rlhf_lightning.models.embedded import resolve_model_path
from rlhf_lightning.models.loading import disable_dropout, load_causal_lm
from rlhf_lightning.models.reward import RewardModel, ScalarHead, hidden_size_of, load_head, save_head
from rlhf_lightning.models.run_folder import VALUE_FOLDER, RunFolder, RunInfo

ADAPTERS = {"policy": "default", "reference": "reference", "reward": "reward", "value": "value"}
"""The peft adapter of each role on the shared base model (a separate model's own adapter is its ``default``)."""
TRAINED = ("policy", "value")


class PPOModels(NamedTuple):
    """What :func:`build_roles` loads; the module keeps each ``nn.Module`` as an attribute of the same name."""

    model: nn.Module
    """The shared base with the policy's adapter (and the reference's, reward's and value's when shared)."""
    roles: dict[str, Role | None]
    """``policy``, ``reference``, ``value``, and ``reward`` (``None`` with a reward function)."""
    reward_head: ScalarHead | None
    value_head: ScalarHead
    reward_backbone: RewardModel | None
    """The reward model loaded as its own model (``separate_reward``)."""
    value_backbone: nn.Module | None
    """The value function's own copy of the reward model (``separate_value``)."""

    def describe(self, sft_adapter: str | None, reward: str, reference_adapter: str | None = None) -> str:
        """One line for the log: where each role comes from."""
        reference = reference_adapter or ("the same adapter" if sft_adapter else "base model")
        return (
            f"policy from {sft_adapter or 'fresh LoRA'}, reference {reference}, "
            f"reward {reward}{' (own model)' if self.reward_backbone is not None else ''}, "
            f"value {'own model' if self.value_backbone is not None else 'adapter'}"
        )


def reward_info(reward_model: str) -> RunInfo:
    return RunFolder(reward_model).require_stage("reward", what="a reward model")


def shares_base(info: RunInfo, model_config: ModelConfig) -> bool:
    """Whether a reward run is an adapter on the policy's base model (so it can be one more adapter on it)."""
    return info.adapter and resolve_model_path(info.base_model) == resolve_model_path(model_config.name_or_path)


def build_roles(
    model_config: ModelConfig,
    lora: LoraConfig,
    reward_model: str | None,
    separate_reward: bool,
    separate_value: bool,
    device: torch.device,
    tokenizer,
    reference_adapter: str | None = None,
) -> PPOModels:
    """Load the policy's base with its adapter (the SFT adapter, or fresh LoRA weights), then the reference
    (``reference_adapter`` when given, else the policy's starting adapter again; frozen; the base alone
    without either), the reward model (``None`` when ``reward_model`` is
    ``None``: a reward function scores) and the value function (from the reward model's adapter and head, or
    fresh LoRA weights and a fresh head), and set what trains: the policy and value adapters and the value head.

    Raises ``ValueError`` when the reward model cannot share the base (another base, or a full model) and
    ``separate_reward`` is off, or when it uses another tokenizer."""
    model = load_causal_lm(model_config, lora, device=device)  # policy: adapter "default"
    model.train()
    hidden = hidden_size_of(model)
    reference_adapter = reference_adapter or model_config.adapter
    if reference_adapter is not None:
        model.load_adapter(reference_adapter, adapter_name=ADAPTERS["reference"], is_trainable=False)
        reference = Role(model, ADAPTERS["reference"])
    else:
        reference = Role(model, None)  # the base alone
    reward, reward_head, reward_backbone = None, None, None
    info = reward_info(reward_model) if reward_model is not None else None
    if info is not None and (separate_reward or not shares_base(info, model_config)):
        if not separate_reward:
            raise ValueError(
                f"the reward model {reward_model} was not trained as an adapter on {model_config.name_or_path}: "
                "set separate_reward: true to load it as its own model"
            )
        base = dataclasses.replace(model_config, adapter=None, gradient_checkpointing=False)
        reward_backbone = RewardModel.from_folder(reward_model, base, device)
        if reward_backbone.tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"the reward model {reward_model} uses another tokenizer than the policy")
        reward_backbone.requires_grad_(False)
        adapter = ADAPTERS["policy"] if hasattr(reward_backbone.model, "peft_config") else None
        reward = Role(reward_backbone.model, adapter, reward_backbone.head)
    elif info is not None:
        model.load_adapter(reward_model, adapter_name=ADAPTERS["reward"], is_trainable=False)
        reward_head = load_head(reward_model, hidden).to(device).requires_grad_(False)
        reward = Role(model, ADAPTERS["reward"], reward_head)
    value_backbone = None
    if separate_value:
        if info is None:
            raise ValueError("separate_value needs a reward_model to start the value function from")
        folder = RunFolder(reward_model)
        config = dataclasses.replace(model_config, name_or_path=folder.base_model, adapter=folder.adapter)
        value_backbone = load_causal_lm(config, lora, device=device)
        value_backbone.train()
        value_head = load_head(reward_model, hidden_size_of(value_backbone)).to(device)
        value = Role(value_backbone, ADAPTERS["policy"], value_head)
    elif info is not None and shares_base(info, model_config):
        model.load_adapter(reward_model, adapter_name=ADAPTERS["value"], is_trainable=True)
        value_head = load_head(reward_model, hidden).to(device)
        value = Role(model, ADAPTERS["value"], value_head)
    else:
        model.add_adapter(ADAPTERS["value"], lora.to_peft(modules_to_save=False))
        value_head = ScalarHead(hidden).to(device)
        value = Role(model, ADAPTERS["value"], value_head)
    trained = [ADAPTERS[role] for role in TRAINED]
    model.set_requires_grad([n for n in model.peft_config if n in trained], True)
    frozen = [n for n in model.peft_config if n not in trained]
    if frozen:
        model.set_requires_grad(frozen, False)
    value_head.requires_grad_(True)
    # Adapters loaded from folders bring their own lora_dropout (0.05 in many recipes); PPO's ratio is only 1 on
    # the first minibatch if no forward pass drops anything.
    for module in (model, reward_backbone, value_backbone):
        if module is not None:
            disable_dropout(module)
    roles = {"policy": Role(model, ADAPTERS["policy"]), "reference": reference, "reward": reward, "value": value}
    return PPOModels(model, roles, reward_head, value_head, reward_backbone, value_backbone)


def chat_template_mismatches(datamodule, folders: dict[str, str | None]) -> list[str]:
    """Warnings for the run ``folders`` (``{"reward model": path, ...}``) whose text rows were formatted otherwise
    than the prompts ``datamodule`` formats text prompts (its ``chat_template`` against the mode each folder
    records): the policy would answer, and be scored on, sequences shaped unlike those the reward model learned
    from. Nothing when the prompts hold no text prompt (the option is moot for conversations)."""
    examples = getattr(datamodule, "train_examples", None) or []
    if not any(isinstance((e.row or {}).get("prompt"), str) for e in examples):
        return []
    mode, messages = datamodule.chat_template, []
    for name, folder in folders.items():
        recorded = RunFolder(folder).chat_template if folder and Path(folder).is_dir() else None
        if recorded is not None and recorded != mode and "never" in (recorded, mode):
            messages.append(
                f"ppo: text prompts are formatted with data.chat_template: {mode}, but the {name} {folder} "
                f"was trained with chat_template: {recorded}: set data.chat_template: {recorded} so the policy "
                "answers in the format the reward model scores "
                "(docs/data-formats.md#text-rows-on-chat-models-chat_template)"
            )
    return messages


def save_trained_roles(
    folder: Path, model: nn.Module, value_backbone: nn.Module | None, value_head: ScalarHead
) -> None:
    """The policy adapter at the top of ``folder`` (peft format, loadable like an SFT adapter); the value adapter
    (or the value's own model) and head in ``folder/value``."""
    model.save_pretrained(folder, selected_adapters=[ADAPTERS["policy"]])
    if value_backbone is not None:
        value_backbone.save_pretrained(folder / VALUE_FOLDER)
    elif ADAPTERS["value"] in model.peft_config:  # peft writes a named adapter to folder/<name>
        model.save_pretrained(folder, selected_adapters=[ADAPTERS["value"]])
    save_head(value_head, folder / VALUE_FOLDER)
