"""``rlhf-lightning score``: score (prompt, response) rows with a trained reward model.

    rlhf-lightning score runs/reward/final answers.jsonl scored.jsonl [--batch_size 16]

Input rows are demonstrations in any accepted format, with ``response`` accepted as another name for
``completion``: ``{"prompt": "...", "response": "..."}``, ``{"messages": [...]}``, ... Each output line is
the input row with a ``score`` field added, in the input order.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhf_lightning.data.chat import ChatTemplateMode, describe_text_rows, text_rows_as_chat
from rlhf_lightning.data.errors import RowLocation
from rlhf_lightning.data.formats import scored_sequence
from rlhf_lightning.data.readers import describe, read_rows
from rlhf_lightning.models.config import DType, ModelConfig, Quantization
from rlhf_lightning.models.loading import load_tokenizer, resolve_device
from rlhf_lightning.models.reward import RewardModel, score_sequences
from rlhf_lightning.models.run_folder import RunFolder
from rlhf_lightning.models.score_function import require_finite


def score_file(
    model: str,
    input: str,
    output: str,
    batch_size: int = 16,
    device: str = "auto",
    dtype: DType = "float32",
    quantization: Quantization = "none",
    chat_template: ChatTemplateMode | None = None,
) -> Path:
    """Score every row of ``input`` with the reward model folder ``model``; write jsonl to ``output``.

    Args:
        model: A reward run's ``final`` folder (adapter + score head).
        input: Rows to score: jsonl/json/parquet/csv, ``builtin:NAME`` or ``hf:OWNER/NAME[:SPLIT]``.
        output: The jsonl file to write.
        batch_size: Sequences per forward pass (rows are batched by length).
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        dtype: Weight dtype of the base model.
        quantization: Load the base 4-bit / 8-bit to save memory.
        chat_template: How text rows are formatted (``auto``, ``always``, ``never``, as the DataModules'
            option); default: as the reward model's training data was (recorded in its folder).
    """
    folder = RunFolder(model)
    folder.require_stage("reward", what="a reward model folder (the final folder of a reward run)")
    device = resolve_device(device)
    tokenizer = load_tokenizer(model)
    mode = chat_template or folder.chat_template
    chat = text_rows_as_chat(tokenizer, mode, "--chat_template")
    print(f"score: chat_template {mode}: {describe_text_rows(chat)}")
    name = describe(input)
    rows, sequences = [], []
    for row_number, row in read_rows(input):  # every row is checked before any weight is loaded
        sequences.append(scored_sequence(row, tokenizer, RowLocation(name, row_number), chat))
        rows.append(row)
    reward = RewardModel.from_folder(model, ModelConfig(dtype=dtype, quantization=quantization), device=device)
    scores = score_sequences(reward.model, reward.head, sequences, tokenizer.pad_token_id, batch_size)
    require_finite(torch.tensor(scores), f"the reward model {model}")
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row, score in zip(rows, scores):
            f.write(json.dumps({**row, "score": score}, ensure_ascii=False) + "\n")
    print(f"scored {len(rows)} rows: mean {sum(scores) / max(len(scores), 1):+.4f} -> {out}")
    return out
