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
from collections.abc import Sequence
from typing import Literal, NamedTuple

from rlhf_lightning.data.base import RowsDataModule
from rlhf_lightning.data.chat import (
    Conversation,
    encode_conversation,
    encode_text,
    text_turns,
    validate_messages,
    validate_tools,
)
from rlhf_lightning.data.errors import RowLocation, type_name
from rlhf_lightning.data.formats import require_text
from rlhf_lightning.ops.padding import left_pad


class PromptExample(NamedTuple):
    """One tokenized prompt, its text as the model sees it (chat template applied), the text tables show (the
    user's last message; a text prompt's own text), and the row it came from (its prompt fields and
    ``origin``: file and row number), to write it out again."""

    input_ids: list[int]
    text: str
    display: str = ""
    row: dict | None = None


def collate_prompts(examples: Sequence[PromptExample], pad_id: int) -> dict:
    """Left-padded ``input_ids`` and ``attention_mask`` of shape ``(b, t)`` (the mask comes from lengths), and
    ``prompt_text``, the prompts as tables show them (a list of strings)."""
    ids, mask = left_pad([e.input_ids for e in examples], pad_id)
    return {"input_ids": ids, "attention_mask": mask, "prompt_text": [e.display for e in examples]}


def _origin(row: dict, fields: tuple[str, ...], where: RowLocation) -> dict:
    kept = {k: row[k] for k in fields if k in row and row[k] is not None}
    return {**kept, "origin": {"file": where.source, "row": where.row}}


def _last_request(messages: list[dict]) -> str:
    """The content of the last user message (the last message of any role when there is none)."""
    users = [m for m in messages if m["role"] == "user"]
    return (users or messages)[-1]["content"]


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
        max_length: int = 256,
        overlong: Literal["truncate", "drop"] = "drop",
        batch_size: int = 16,
        **kwargs,
    ) -> None:
        super().__init__(train_files, max_length=max_length, overlong=overlong, batch_size=batch_size, **kwargs)

    def tokenize_row(self, row: object, where: RowLocation) -> PromptExample:
        if not isinstance(row, dict):
            raise where.error(None, f"expected an object with named fields, got {type_name(row)}")
        if "prompt" in row:
            prompt = row["prompt"]
            if isinstance(prompt, str):
                validate_tools(row, where, conversational=False)
                text = require_text(row, "prompt", where)
                origin = _origin(row, ("prompt",), where)
                if self.chat:
                    return self._encode(text_turns(text), origin, where, text)
                ids = encode_text(self.tokenizer, text, add_special_tokens=True)
                return PromptExample(ids, text, text, origin)
            if not isinstance(prompt, list):
                raise where.error("prompt", f"expected a string or a list of messages, got {type_name(prompt)}")
            messages = validate_messages(prompt, "prompt", where)
            if messages[-1]["role"] == "assistant":
                raise where.error("prompt", "ends with an assistant message; the policy writes that turn")
            return self._chat(messages, row, where, "prompt")
        if "messages" in row:
            messages = validate_messages(row["messages"], "messages", where)
            while messages and messages[-1]["role"] == "assistant":
                messages.pop()  # a demonstration's answer: the policy writes its own
            if not messages:
                raise where.error("messages", "has no message before the assistant's to use as a prompt")
            return self._chat(messages, row, where, "messages")
        raise where.error(
            "prompt",
            f"missing (the row has fields {sorted(row)}); expected 'prompt' (a string or a list of messages) "
            "or 'messages'",
        )

    def _chat(self, messages: list[dict], row: dict, where: RowLocation, field: str) -> PromptExample:
        conversation = Conversation.of([(field, messages)], validate_tools(row, where))
        origin = _origin({field: messages, "tools": row.get("tools")}, (field, "tools"), where)
        return self._encode(conversation, origin, where, _last_request(messages))

    def _encode(self, conversation: Conversation, origin: dict, where: RowLocation, display: str) -> PromptExample:
        field = conversation.names[0].split("[")[0]
        encoding, _ = encode_conversation(self.tokenizer, conversation, where, field, add_generation_prompt=True)
        return PromptExample(encoding.input_ids, encoding.text, display, origin)

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
        import json
        from pathlib import Path

        lines = [json.dumps(e.row, ensure_ascii=False) + "\n" for e in self.val_examples]
        Path(path).write_text("".join(lines), encoding="utf-8")
        return len(lines)
