"""Turning rows in the ecosystem's formats into token ids and a loss mask.

Accepted demonstration formats (the same conventions as TRL's datasets):

===================  =======================================================  ==========================
format               row                                                      trained tokens by default
===================  =======================================================  ==========================
language modeling    ``{"text": str}``                                        all, plus EOS
prompt-completion    ``{"prompt": str, "completion": str}``                   completion, plus EOS
conversational       ``{"messages": [{"role": ..., "content": ...}, ...]}``   every assistant turn
conv. prompt-compl.  ``{"prompt": [messages], "completion": [messages]}``     the completion's assistant turns
===================  =======================================================  ==========================

Standard text is tokenized as is (prompt and completion separately, then concatenated, so the boundary
is exact). Message lists go through the tokenizer's chat template; an assistant turn's trained tokens run
through its end-of-turn token (EOS for ChatML templates) so that the model learns to stop.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from rlhf_lightning.data.errors import DataFormatError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")


class TokenizedExample(NamedTuple):
    """One training sequence. ``loss_mask[i]`` is True when token i is a target (predicted from i - 1)."""

    input_ids: list[int]
    loss_mask: list[bool]

    @property
    def prompt_length(self) -> int:
        """Number of tokens before the first trained token (the context a generation would start from)."""
        return next((i for i, m in enumerate(self.loss_mask) if m), len(self.loss_mask))


class RowLocation(NamedTuple):
    source: str
    row: int

    def error(self, field: str | None, problem: str) -> DataFormatError:
        return DataFormatError(self.source, self.row, field, problem)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def require_text(row: dict, key: str, where: RowLocation, allow_empty: bool = False) -> str:
    if key not in row:
        raise where.error(key, f"missing (the row has fields {sorted(row)})")
    value = row[key]
    if not isinstance(value, str):
        raise where.error(key, f"expected a string, got {_type_name(value)}")
    if not allow_empty and not value.strip():
        raise where.error(key, "is empty")
    return value


def validate_messages(value: object, field: str, where: RowLocation) -> list[dict]:
    """Check a list of ``{"role", "content"}`` messages and return it as plain dicts."""
    if not isinstance(value, list):
        raise where.error(field, f"expected a list of messages, got {_type_name(value)}")
    if not value:
        raise where.error(field, "is an empty list of messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise where.error(f"{field}[{i}]", f"expected a message object, got {_type_name(message)}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise where.error(f"{field}[{i}].role", f"expected one of {ROLES}, got {role!r}")
        if not isinstance(content, str):
            raise where.error(f"{field}[{i}].content", f"expected a string, got {_type_name(content)}")
        if role == "assistant" and not content.strip():
            raise where.error(f"{field}[{i}].content", "assistant message is empty")
        messages.append({"role": role, "content": content})
    return messages


def detect_format(row: object, where: RowLocation) -> str:
    """Name the demonstration format of ``row``: ``text``, ``prompt_completion``, ``messages``,
    or ``conversational_prompt_completion``."""
    if not isinstance(row, dict):
        raise where.error(None, f"expected an object with named fields, got {_type_name(row)}")
    if "messages" in row:
        return "messages"
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list) and isinstance(completion, list):
            return "conversational_prompt_completion"
        if isinstance(prompt, list) != isinstance(completion, list):
            bad = "completion" if isinstance(prompt, list) else "prompt"
            raise where.error(bad, "prompt and completion must both be strings or both be message lists")
        return "prompt_completion"
    if "text" in row:
        return "text"
    if "prompt" in row:
        raise where.error("completion", "missing: a demonstration needs a completion for its prompt")
    raise where.error(
        None,
        f"no recognised fields (found {sorted(row)}); expected 'text', 'prompt' + 'completion', or 'messages'",
    )


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def tokenize_chat(
    tokenizer, messages: list[dict], first_trainable: int, where: RowLocation, field: str
) -> TokenizedExample:
    """Tokenize a conversation through the chat template; assistant turns at index >= ``first_trainable``
    are marked for loss, each through its first EOS token."""
    if tokenizer.chat_template is None:
        raise where.error(field, "message lists need a tokenizer with a chat template; this one has none")
    text = _render(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < first_trainable:
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (text.startswith(through) and through.startswith(before)):
            raise where.error(
                field,
                "the chat template renders a conversation differently from its prefixes, so the assistant "
                "turns cannot be located; use prompt/completion text instead",
            )
        spans.append((len(before), len(through)))
    if not spans:
        raise where.error(field, "has no assistant message to learn from")
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    loss_mask = [False] * len(ids)
    eos = tokenizer.eos_token_id
    last_span_ended = False
    for start, end in spans:
        last_span_ended = False
        for j, (tok_start, tok_end) in enumerate(offsets):
            if tok_start >= start and tok_end <= end and tok_end > tok_start:
                loss_mask[j] = True
                if ids[j] == eos:
                    last_span_ended = True
                    break  # the turn ends at EOS; the template's trailing newline is not a target
    if messages[-1]["role"] == "assistant" and not last_span_ended:
        ids.append(eos)  # templates whose turns do not end in EOS still need the model to learn to stop
        loss_mask.append(True)
    return TokenizedExample(ids, loss_mask)


def tokenize_demonstration(
    row: object, tokenizer, where: RowLocation, completion_only_loss: bool = True
) -> TokenizedExample:
    """Validate one demonstration row and tokenize it. Raises :class:`DataFormatError` on bad input."""
    kind = detect_format(row, where)
    eos = tokenizer.eos_token_id
    if kind == "text":
        ids = tokenizer(require_text(row, "text", where), add_special_tokens=True)["input_ids"] + [eos]
        return TokenizedExample(ids, [True] * len(ids))
    if kind == "prompt_completion":
        prompt = require_text(row, "prompt", where, allow_empty=True)
        completion = require_text(row, "completion", where)
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [eos]
        mask = [not completion_only_loss] * len(prompt_ids) + [True] * len(completion_ids)
        return TokenizedExample(prompt_ids + completion_ids, mask)
    if kind == "messages":
        messages = validate_messages(row["messages"], "messages", where)
        example = tokenize_chat(tokenizer, messages, 0, where, "messages")
    else:
        prompt = validate_messages(row["prompt"], "prompt", where)
        completion = validate_messages(row["completion"], "completion", where)
        if not any(m["role"] == "assistant" for m in completion):
            raise where.error("completion", "has no assistant message")
        example = tokenize_chat(tokenizer, prompt + completion, len(prompt), where, "completion")
    if not completion_only_loss:
        example = TokenizedExample(example.input_ids, [True] * len(example.input_ids))
    return example


def truncate(example: TokenizedExample, max_length: int) -> TokenizedExample | None:
    """Keep the first ``max_length`` tokens; ``None`` when nothing trainable is left."""
    ids, mask = example.input_ids[:max_length], example.loss_mask[:max_length]
    # token 0 is never a target (nothing predicts it), so at least one target must sit past it
    return TokenizedExample(ids, mask) if any(mask[1:]) else None


def scored_sequence(row: object, tokenizer, where: RowLocation) -> list[int]:
    """Prompt + response ids of a demonstration-like row, ending at the response's EOS: the sequence a
    reward model scores. ``response`` is accepted as another name for ``completion``."""
    if isinstance(row, dict) and "response" in row and "completion" not in row:
        row = {k: v for k, v in row.items() if k != "response"} | {"completion": row["response"]}
    example = tokenize_demonstration(row, tokenizer, where)
    last = max(i for i, m in enumerate(example.loss_mask) if m)
    return example.input_ids[: last + 1]
