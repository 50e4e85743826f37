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
from pathlib import Path
from typing import Literal

from rlhf_lightning.models.export import (
    SCORE_BIAS_KEY,
    classification_model,
    give_distinct_pad,
    merged_causal_lm,
    target_dtype,
)
from rlhf_lightning.models.loading import load_tokenizer
from rlhf_lightning.models.reward import load_head
from rlhf_lightning.models.run_folder import RunFolder

__all__ = ["SCORE_BIAS_KEY", "export_model"]


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
    info = RunFolder(folder).require_stage("sft", "reward", "ppo", what="an SFT, reward or PPO run's final folder")
    stage = info.stage
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; choose another folder or pass --overwrite true")
    tokenizer = load_tokenizer(str(folder))
    causal_lm = merged_causal_lm(folder, info)
    target = target_dtype(dtype, folder, info)
    if stage == "reward":
        give_distinct_pad(tokenizer, causal_lm)
        model = classification_model(causal_lm, load_head(folder, causal_lm.config.hidden_size), tokenizer.pad_token_id)
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
        "base_model": info.base_model,
        "dtype": str(target),
    }
    (out / "rlhf_lightning_export.json").write_text(json.dumps(provenance, indent=2) + "\n")
    kind = type(model).__name__
    print(f"exported the {stage} run {folder} as {kind} ({str(target).removeprefix('torch.')}) -> {out}")
    return out
