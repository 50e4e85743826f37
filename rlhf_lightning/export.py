"""``rlhf-lightning export``: a run's adapter merged into its base model, saved as a plain Hugging Face folder.

    rlhf-lightning export runs/quickstart/ppo/final exported/policy
    rlhf-lightning export runs/quickstart/reward/final exported/reward

An SFT or PPO run becomes a ``*ForCausalLM`` folder (safetensors weights, config, generation config,
tokenizer with its chat template) that ``AutoModelForCausalLM.from_pretrained`` loads without peft or this
project. PPO's value adapter and head stay behind. A reward run becomes a ``*ForSequenceClassification``
folder with one label whose logit is the reward score, read by transformers at the last non-pad token.

The merge happens in float32 on an unquantized copy of the base, then the weights are cast to ``dtype``.
An adapter trained on a 4-bit base was fitted to the quantized weights, so the merged model differs from the
training-time one by the quantization error (small for NF4, but not zero).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf_lightning.models.embedded import resolve_model_path
from rlhf_lightning.models.loading import load_tokenizer, read_run_info, torch_dtype
from rlhf_lightning.models.reward import load_head

log = logging.getLogger(__name__)

SCORE_BIAS_KEY = "rlhf_lightning_score_bias"
"""config.json entry holding the reward head's bias when the exported classification head has none."""


def _merged_causal_lm(folder: Path, info: dict) -> nn.Module:
    """The run's model in float32 with its adapter merged (or the full model a run without LoRA saved)."""
    if not info.get("adapter"):
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(info["base_model"]), dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(folder)).merge_and_unload()


def _target_dtype(name: str, folder: Path, info: dict) -> torch.dtype:
    """``name``, or for ``auto`` the dtype the base model's own config declares (float32 if none)."""
    if name != "auto":
        return torch_dtype(name)
    source = resolve_model_path(info["base_model"]) if info.get("adapter") else str(folder)
    config = AutoConfig.from_pretrained(source)
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    return stored if isinstance(stored, torch.dtype) else getattr(torch, str(stored))


def _classification_model(causal_lm: nn.Module, head, pad_token_id: int) -> nn.Module:
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
        raise NotImplementedError(f"{type(model).__name__} has no single linear score layer to export the head into")
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


def _give_distinct_pad(tokenizer, causal_lm: nn.Module) -> None:
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


def export_model(
    run: str,
    output: str,
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
    overwrite: bool = False,
) -> Path:
    """Merge a run's adapter into its base model and save a plain Hugging Face model folder.

    Args:
        run: A run's ``final`` folder (SFT, reward or PPO), as written by ``rlhf-lightning fit``.
        output: The folder to write (``config.json``, ``model.safetensors``, tokenizer files).
        dtype: Weight dtype of the exported model; ``auto`` keeps the base model's own dtype.
        overwrite: Write into ``output`` even if it already holds files.
    """
    folder, out = Path(run), Path(output)
    info = read_run_info(folder)
    stage = info.get("stage")
    if stage not in ("sft", "reward", "ppo"):
        raise ValueError(f"{folder} holds a '{stage}' run; export takes an SFT, reward or PPO run's final folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; choose another folder or pass --overwrite true")
    tokenizer = load_tokenizer(str(folder))
    causal_lm = _merged_causal_lm(folder, info)
    target = _target_dtype(dtype, folder, info)
    if stage == "reward":
        _give_distinct_pad(tokenizer, causal_lm)
        model = _classification_model(
            causal_lm, load_head(folder, causal_lm.config.hidden_size), tokenizer.pad_token_id
        )
        del causal_lm
    else:
        model = causal_lm
        model.config.use_cache = True
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            model.generation_config.eos_token_id = tokenizer.eos_token_id
    model = model.to(target)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    provenance = {
        "exported_from": str(folder),
        "stage": stage,
        "base_model": info.get("base_model"),
        "dtype": str(target),
    }
    (out / "rlhf_lightning_export.json").write_text(json.dumps(provenance, indent=2) + "\n")
    kind = type(model).__name__
    print(f"exported the {stage} run {folder} as {kind} ({str(target).removeprefix('torch.')}) -> {out}")
    return out
