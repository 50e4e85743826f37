"""``rlhf-lightning export``: a run's adapter merged into its base model, saved as a plain Hugging Face folder.

    rlhf-lightning export runs/quickstart/ppo/final exported/policy
    rlhf-lightning export runs/quickstart/reward/final exported/reward

An SFT or PPO run becomes a ``*ForCausalLM`` folder (safetensors weights, config, generation config,
tokenizer with its chat template) that ``AutoModelForCausalLM.from_pretrained`` loads without peft or this
project. Its generation config's ``eos_token_id`` is the run's whole stop set (the tokenizer's EOS, the base
model's generation-config EOS ids, the chat template's end-of-turn token, PPO's ``rollout.stop_tokens``), so
plain ``generate`` ends a reply where the run did. PPO's value adapter and head stay behind. A reward run
becomes a ``*ForSequenceClassification`` folder with one label whose logit is the reward score, read by
transformers at the last non-pad token.

A run that trained its own copy of tied input embeddings or LM head (``lora.modules_to_save``) is exported
with both matrices and ``tie_word_embeddings`` false. ``rlhf_lightning_export.json`` records where the folder
came from and, under ``inputs``, how its inputs must be formatted (chat template or raw text, as the run's
data were).

The merge happens in float32 on an unquantized copy of the base, then the weights are cast to ``dtype``.
An adapter trained on a 4-bit base was fitted to the quantized weights, so the merged model differs from the
training-time one by the quantization error (small for NF4, but not zero).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from torch import nn

from rlhf_lightning.data.chat import end_of_turn_token_id, stop_token_ids
from rlhf_lightning.models.export import (
    SCORE_BIAS_KEY,
    classification_model,
    give_distinct_pad,
    merged_causal_lm,
    recorded_stop_tokens,
    set_stop_ids,
    target_dtype,
)
from rlhf_lightning.models.generation import generation_eos_ids
from rlhf_lightning.models.loading import load_tokenizer
from rlhf_lightning.models.reward import load_head
from rlhf_lightning.models.run_folder import RunFolder, RunInfo

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

    Raises:
        ValueError: ``run`` is not an SFT, reward or PPO run's final folder.
        FileExistsError: ``output`` holds files and ``overwrite`` is false.
        OptionError: a recorded ``rollout.stop_tokens`` entry is not one token of the run's tokenizer.
    """
    folder, out = Path(run), Path(output)
    info = RunFolder(folder).require_stage("sft", "reward", "ppo", what="an SFT, reward or PPO run's final folder")
    stage = info.stage
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; choose another folder or pass --overwrite true")
    tokenizer = load_tokenizer(str(folder))
    extra_stops = recorded_stop_tokens(folder, info)
    stop_token_ids(tokenizer, (), extra_stops, "rollout.stop_tokens")  # a bad entry is refused before loading
    causal_lm = merged_causal_lm(folder, info)
    target = target_dtype(dtype, folder, info)
    stops = []
    if stage == "reward":
        give_distinct_pad(tokenizer, causal_lm)
        model = classification_model(causal_lm, load_head(folder, causal_lm.config.hidden_size), tokenizer.pad_token_id)
        del causal_lm
    else:
        model = causal_lm
        model.config.use_cache = True
        model.config.pad_token_id = tokenizer.pad_token_id
        stops = export_stop_ids(tokenizer, model, extra_stops)
        set_stop_ids(model, stops, tokenizer.pad_token_id)
    model = model.to(target)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    provenance = {
        "exported_from": str(folder),
        "stage": stage,
        "base_model": info.base_model,
        "dtype": str(target),
        "inputs": input_format(tokenizer, info),
    }
    if stage != "reward":
        provenance["stop_tokens"] = tokenizer.convert_ids_to_tokens(stops)
        provenance["stop_token_ids"] = stops
    (out / "rlhf_lightning_export.json").write_text(json.dumps(provenance, indent=2) + "\n")
    kind = type(model).__name__
    print(f"exported the {stage} run {folder} as {kind} ({str(target).removeprefix('torch.')}) -> {out}")
    return out


def export_stop_ids(tokenizer, causal_lm: nn.Module, extra: list[str]) -> list[int]:
    """The run's stop set, sorted: the tokenizer's EOS, the EOS ids of the model's generation config, the chat
    template's end-of-turn token and ``extra`` token texts (:func:`rlhf_lightning.data.chat.stop_token_ids`,
    as rollouts and sample tables stop). Raises ``OptionError`` when an ``extra`` text is not one token."""
    return stop_token_ids(tokenizer, generation_eos_ids(causal_lm), extra, "rollout.stop_tokens")


def input_format(tokenizer, info: RunInfo) -> dict:
    """How the exported model's inputs must be formatted, for ``rlhf_lightning_export.json``: whether text
    goes through the tokenizer's chat template (as the run's ``data.chat_template`` formatted its text rows),
    for a reward model the token its score is read at, and a one-line recipe."""
    chat = info.chat_template != "never" and getattr(tokenizer, "chat_template", None) is not None
    eos = tokenizer.eos_token
    end_of_turn = end_of_turn_token_id(tokenizer) if chat else None
    ends_with = tokenizer.convert_ids_to_tokens(end_of_turn) if end_of_turn is not None else eos
    record = {"chat_template": chat, "data_chat_template": info.chat_template}
    if info.stage == "reward":
        if chat:
            recipe = (
                "render the conversation with its answer as the last assistant turn with "
                "tokenizer.apply_chat_template(messages, tokenize=False), cut the text after the "
                f"{ends_with} that closes the answer (the tokenizer's EOS after it if the template wrote none); "
                "tokenize with add_special_tokens=False the prompt part (up to where generation starts) and "
                "the answer part separately, with split_special_tokens=True for the text of the messages "
                "(docs/reward.md, scoring with the exported model)"
            )
        else:
            recipe = (
                "tokenizer(prompt, split_special_tokens=True)['input_ids'] + tokenizer(response, "
                f"add_special_tokens=False, split_special_tokens=True)['input_ids'] + [{eos} id]"
            )
        recipe += f"; score = logits[0, 0] + config.{SCORE_BIAS_KEY} (0 if absent)"
        return record | {"scored_sequence_ends_with": ends_with, "recipe": recipe}
    prompt = "tokenizer.apply_chat_template(messages, add_generation_prompt=True)" if chat else "tokenizer(text) (raw)"
    recipe = f"prompt: {prompt}; the reply ends at any token of generation_config.eos_token_id"
    return record | {"recipe": recipe}
