"""Prompts for the PPO stage: the contexts the policy answers during rollouts.

Accepted rows:

- ``{"prompt": str}``: the user's turn of the chat template, with the generation prompt, when the tokenizer
  has one (``chat_template: auto``, the default); with ``chat_template: never`` (or no template) plain text,
  tokenized as is (with the tokenizer's special tokens, e.g. BOS). Text that spells a control token stays text;
- ``{"prompt": [messages]}``: rendered through the chat template with the generation prompt; it must not
  end with an assistant message (the policy writes that turn);
- ``{"messages": [messages]}``: a conversation whose trailing assistant messages are dropped, the rest
  rendered with the generation prompt.

A row's ``tools`` list goes to the chat template with its messages.

Other fields (``completion``, ``chosen``, ``rejected``, ``responses``, ...) are ignored, so demonstration
and comparison files can be reused as prompt files.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from rlhf_lightning.data.base import RowsDataModule
from rlhf_lightning.data.errors import RowLocation
from rlhf_lightning.data.formats import PromptExample, tokenize_prompt
from rlhf_lightning.ops.padding import left_pad


def collate_prompts(examples: Sequence[PromptExample], pad_id: int) -> dict:
    """Left-padded ``input_ids`` and ``attention_mask`` of shape ``(b, t)`` (the mask comes from lengths), and
    ``prompt_text``, the prompts as tables show them (a list of strings)."""
    ids, mask = left_pad([e.input_ids for e in examples], pad_id)
    return {"input_ids": ids, "attention_mask": mask, "prompt_text": [e.display for e in examples]}


class PromptsDataModule(RowsDataModule):
    """Reads, validates and tokenizes prompts, then serves left-padded batches for rollouts
    (``input_ids``, ``attention_mask``).

    Every row is checked before training starts; the first bad row stops the run with an error naming
    its file, row and field.

    Args:
        train_files: Prompts: local jsonl/json/parquet/csv paths, ``builtin:NAME``, or
            ``hf:OWNER/NAME[:SPLIT]``. Rows hold ``prompt`` (a string or a list of messages) or
            ``messages`` (trailing assistant messages are dropped); other fields are ignored.
        max_length: Longest prompt in tokens (the response comes on top of it).
        overlong: ``drop`` (default) removes a longer prompt; ``truncate`` keeps its last ``max_length``
            tokens (the end of a chat prompt holds the generation prompt). Either way the rows affected are
            counted and logged.
        batch_size: Prompts per PPO iteration (per device): one batch is one iteration's rollouts.
        **kwargs: The options every DataModule shares (:class:`~rlhf_lightning.data.base.RowsDataModule`).
    """

    kind = "prompts"

    def __init__(
        self,
        train_files: str | list[str] = "builtin:prompts.jsonl",
        *,
        max_length: int = 256,
        overlong: Literal["truncate", "drop"] = "drop",
        batch_size: int = 16,
        **kwargs,
    ) -> None:
        super().__init__(train_files, max_length=max_length, overlong=overlong, batch_size=batch_size, **kwargs)

    def tokenize_row(self, row: object, where: RowLocation) -> PromptExample:
        return tokenize_prompt(row, self.tokenizer, where, self.chat)

    def example_length(self, example: PromptExample) -> int:
        return len(example.input_ids)

    def truncate(self, example: PromptExample) -> PromptExample:
        """Keep the last ``max_length`` tokens (the end of a chat prompt holds the generation prompt); tables
        then show what is left of the prompt, after "…"."""
        ids = example.input_ids[-self.max_length :]
        kept = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        return example._replace(input_ids=ids, text=text, display="…" + kept)

    def collate_fn(self):
        return functools.partial(collate_prompts, pad_id=self.tokenizer.pad_token_id)

    def sample_prompts(self, n: int) -> list[list[int]]:
        """Token ids of the first ``n`` validation prompts (training ones if there is no validation set)."""
        pool = self.val_examples or self.train_examples
        return [list(e.input_ids) for e in pool[:n]]

    def sample_batch(self, n: int) -> dict | None:
        """The first ``n`` validation prompts (training ones if there is no validation set) as one batch."""
        pool = self.val_examples or self.train_examples
        return collate_prompts(pool[:n], self.tokenizer.pad_token_id) if pool and n > 0 else None

    def write_heldout(self, path) -> int:
        """Write the held-out prompts (their prompt fields and ``origin``) to a jsonl file that any command
        reads as a prompts file, so exactly these are evaluated later. Returns how many."""
        lines = [json.dumps(e.row, ensure_ascii=False) + "\n" for e in self.val_examples]
        Path(path).write_text("".join(lines), encoding="utf-8")
        return len(lines)
