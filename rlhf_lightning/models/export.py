"""Building the Hugging Face models ``rlhf-lightning export`` writes: a run's adapter merged into its base
model in float32, and a reward run as a ``*ForSequenceClassification`` whose score layer is the reward head;
with them the stop tokens the run ended its responses with."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationConfig

from rlhf_lightning.models.embedded import resolve_model_path
from rlhf_lightning.models.loading import UnsupportedModel, torch_dtype
from rlhf_lightning.models.run_folder import EVALUATION_FILE, RunInfo

SCORE_BIAS_KEY = "rlhf_lightning_score_bias"
"""config.json entry holding the reward head's bias when the exported classification head has none."""


def merged_causal_lm(folder: Path, info: RunInfo) -> nn.Module:
    """The run's model in float32 with its adapter merged (or the full model a run without LoRA saved); its
    config unties the input and output embeddings when the run trained its own copy of either
    (:func:`untie_trained_embeddings`)."""
    if not info.adapter:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    from peft import PeftModel  # on first use, as in models.loading

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(info.base_model), dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    if untie_trained_embeddings(merged):
        print(
            "the run trained its own copy of the tied input embeddings or LM head (lora.modules_to_save): "
            "exported with both matrices and tie_word_embeddings false"
        )
    return merged


def untie_trained_embeddings(model: nn.Module) -> bool:
    """Mark the input and output embeddings untied in ``model``'s config (and its text config, for a model
    with nested configs) when its config ties them but they are no longer one tensor: after merging an adapter
    that trained a ``modules_to_save`` copy of ``embed_tokens`` or ``lm_head``. Left tied, a loader that
    honours the config (older transformers, other runtimes) re-ties them and drops one trained matrix.
    Returns whether anything changed; peft 0.20 and later already untie on merge."""
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    weights = [getattr(module, "weight", None) for module in (inputs, outputs)]
    if any(w is None for w in weights) or weights[0].data_ptr() == weights[1].data_ptr():
        return False
    tied = [c for c in (model.config, model.config.get_text_config()) if getattr(c, "tie_word_embeddings", False)]
    for config in tied:
        config.tie_word_embeddings = False
    return bool(tied)


def recorded_stop_tokens(folder: Path, info: RunInfo) -> list[str]:
    """The extra stop tokens the run ended its responses with (PPO's ``rollout.stop_tokens``): as its run info
    records them, else (runs saved before they were recorded) as its ``evaluation.json`` settings do; none for
    a run that records neither (SFT, reward)."""
    recorded = info.extra.get("stop_tokens")
    if recorded is None and (folder / EVALUATION_FILE).exists():
        recorded = json.loads((folder / EVALUATION_FILE).read_text()).get("settings", {}).get("stop_tokens")
    return list(recorded or [])


def set_stop_ids(causal_lm: nn.Module, stop_ids: list[int], pad_token_id: int | None) -> None:
    """Write the stop set into the model's generation config (created from its config if it has none): plain
    ``generate`` then ends a reply at any of them, as the run did."""
    config = causal_lm.generation_config or GenerationConfig.from_model_config(causal_lm.config)
    config.eos_token_id = stop_ids[0] if len(stop_ids) == 1 else list(stop_ids)
    config.pad_token_id = pad_token_id
    causal_lm.generation_config = config


def target_dtype(name: str, folder: Path, info: RunInfo) -> torch.dtype:
    """``name``, or for ``auto`` the dtype the base model's own config declares (float32 if none)."""
    if name != "auto":
        return torch_dtype(name)
    source = resolve_model_path(info.base_model) if info.adapter else str(folder)
    config = AutoConfig.from_pretrained(source)
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    return stored if isinstance(stored, torch.dtype) else getattr(torch, str(stored))


def classification_model(causal_lm: nn.Module, head, pad_token_id: int) -> nn.Module:
    """A ``*ForSequenceClassification`` with ``causal_lm``'s decoder and the reward head as its score layer."""
    config = type(causal_lm.config).from_dict(causal_lm.config.to_dict())
    config.num_labels = 1
    config.id2label, config.label2id = {0: "reward"}, {"reward": 0}
    config.pad_token_id = pad_token_id
    config.use_cache = True
    prefix = causal_lm.base_model_prefix
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    scorers = [(n, m) for n, m in model.named_children() if n != prefix]
    if len(scorers) != 1 or not isinstance(scorers[0][1], nn.Linear) or scorers[0][1].out_features != 1:
        raise UnsupportedModel(f"{type(model).__name__} has no single linear score layer to export the head into")
    name, linear = scorers[0]
    state = {f"{prefix}.{k}": v for k, v in getattr(causal_lm, prefix).state_dict().items()}
    state[f"{name}.weight"] = head.linear.weight.detach().to(torch.float32)
    bias = float(head.linear.bias.detach())
    if linear.bias is not None:
        state[f"{name}.bias"] = head.linear.bias.detach().to(torch.float32)
    else:
        # transformers' classification heads have no bias: scores come out shifted by -bias, which changes no
        # comparison, win rate or preference probability; the bias is kept in the config to undo the shift.
        setattr(model.config, SCORE_BIAS_KEY, bias)
    model.load_state_dict(state, strict=True, assign=True)
    # Built on the meta device to avoid a second copy of the weights: buffers that are not saved (rotary
    # frequencies) stay on it, so this object is for saving only; loading the folder rebuilds them.
    return model


def give_distinct_pad(tokenizer, causal_lm: nn.Module) -> None:
    """transformers' sequence classifiers read the score at the last token that is not the pad token. With a
    pad equal to EOS (GPT-2, Llama-3 base) that skips the EOS every scored sequence ends with, so the exported
    model would read its score one token early. Such a tokenizer gets a new pad token (its embedding row is
    never read: pad positions are masked out and come after the scored token)."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocabulary = tokenizer.get_vocab()
    pad = next(t for t in ("<pad>", "<|pad|>", "<|rlhf_lightning_pad|>") if t not in vocabulary)
    tokenizer.add_special_tokens({"pad_token": pad})
    causal_lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    print(
        f"the tokenizer's pad token was its EOS: added {pad!r} (id {tokenizer.pad_token_id}) as the pad token, so "
        "that transformers reads the score at the EOS the reward model was trained on"
    )
