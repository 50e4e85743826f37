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

A text prompt and completion on a model with a chat template become a user and an assistant turn (the
``chat_template`` option of the DataModules, :func:`rlhf_lightning.data.chat.text_rows_as_chat`); with
``chat_template: never``, or a tokenizer without a template, they are tokenized as is (prompt and completion
separately, then concatenated, so the boundary is exact). Message lists go through the tokenizer's chat
template (:mod:`rlhf_lightning.data.chat`); an assistant turn's trained tokens run through its end-of-turn
token so that the model learns to stop. In every format, content that spells a control token (``<|im_end|>``,
``</s>``) is tokenized as ordinary text.
"""

from __future__ import annotations

from typing import NamedTuple

from rlhf_lightning.data.chat import (
    Conversation,
    encode_conversation,
    encode_text,
    text_turns,
    validate_messages,
    validate_tools,
)
from rlhf_lightning.data.errors import DataFormatError, RowLocation, type_name

__all__ = [
    "RowLocation",
    "TokenizedExample",
    "detect_format",
    "require_text",
    "scored_sequence",
    "tokenize_conversation",
    "tokenize_demonstration",
    "truncate",
]


class TokenizedExample(NamedTuple):
    """One training sequence. ``loss_mask[i]`` is True when token i is a target (predicted from i - 1).
    ``prompt_length`` tokens come before the response (the context a generation starts from; 0 for text
    rows), whatever ``completion_only_loss`` trains."""

    input_ids: list[int]
    loss_mask: list[bool]
    prompt_length: int


def first_target(loss_mask: list[bool]) -> int:
    return next((i for i, m in enumerate(loss_mask) if m), len(loss_mask))


def require_text(row: dict, key: str, where: RowLocation, allow_empty: bool = False) -> str:
    if key not in row:
        raise where.error(key, f"missing (the row has fields {sorted(row)})")
    value = row[key]
    if not isinstance(value, str):
        raise where.error(key, f"expected a string, got {type_name(value)}")
    if not allow_empty and not value.strip():
        raise where.error(key, "is empty")
    return value


def detect_format(row: object, where: RowLocation) -> str:
    """Name the demonstration format of ``row``: ``text``, ``prompt_completion``, ``messages``,
    or ``conversational_prompt_completion``."""
    if not isinstance(row, dict):
        raise where.error(None, f"expected an object with named fields, got {type_name(row)}")
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


def tokenize_conversation(
    tokenizer, conversation: Conversation, train_from: int, where: RowLocation, field: str
) -> TokenizedExample:
    """Tokenize a conversation through the chat template; assistant turns at index >= ``train_from`` are
    marked for loss (see :func:`rlhf_lightning.data.chat.encode_conversation`)."""
    encoding, loss_mask = encode_conversation(tokenizer, conversation, where, field, train_from=train_from)
    return TokenizedExample(encoding.input_ids, loss_mask, first_target(loss_mask))


def tokenize_demonstration(
    row: object, tokenizer, where: RowLocation, completion_only_loss: bool = True, chat: bool = False
) -> TokenizedExample:
    """Validate one demonstration row and tokenize it; with ``chat``, a text prompt and completion are a user
    and an assistant turn of the chat template. Raises :class:`DataFormatError` on bad input."""
    kind = detect_format(row, where)
    eos = tokenizer.eos_token_id
    tools = validate_tools(row, where, conversational=kind in ("messages", "conversational_prompt_completion"))
    if kind == "text":
        ids = encode_text(tokenizer, require_text(row, "text", where), add_special_tokens=True) + [eos]
        return TokenizedExample(ids, [True] * len(ids), 0)
    if kind == "prompt_completion":
        prompt = require_text(row, "prompt", where, allow_empty=True)
        completion = require_text(row, "completion", where)
        if chat:
            turns = text_turns(prompt, completion)
            example = tokenize_conversation(tokenizer, turns, len(turns.messages) - 1, where, "completion")
            return example if completion_only_loss else example._replace(loss_mask=[True] * len(example.input_ids))
        prompt_ids = encode_text(tokenizer, prompt, add_special_tokens=True)
        completion_ids = encode_text(tokenizer, completion, add_special_tokens=False) + [eos]
        mask = [not completion_only_loss] * len(prompt_ids) + [True] * len(completion_ids)
        return TokenizedExample(prompt_ids + completion_ids, mask, len(prompt_ids))
    if kind == "messages":
        conversation = Conversation.of([("messages", validate_messages(row["messages"], "messages", where))], tools)
        example = tokenize_conversation(tokenizer, conversation, 0, where, "messages")
    else:
        prompt = validate_messages(row["prompt"], "prompt", where)
        completion = validate_messages(row["completion"], "completion", where)
        if not any(m["role"] == "assistant" for m in completion):
            raise where.error("completion", "has no assistant message")
        conversation = Conversation.of([("prompt", prompt), ("completion", completion)], tools)
        example = tokenize_conversation(tokenizer, conversation, len(prompt), where, "completion")
    if not completion_only_loss:
        example = example._replace(loss_mask=[True] * len(example.input_ids))
    return example


def truncate(example: TokenizedExample, max_length: int) -> TokenizedExample | None:
    """Keep the first ``max_length`` tokens; ``None`` when nothing trainable is left."""
    ids, mask = example.input_ids[:max_length], example.loss_mask[:max_length]
    # token 0 is never a target (nothing predicts it), so at least one target must sit past it
    return TokenizedExample(ids, mask, min(example.prompt_length, max_length)) if any(mask[1:]) else None


def scored_sequence(row: object, tokenizer, where: RowLocation, chat: bool = False) -> list[int]:
    """Prompt + response ids of a demonstration-like row, ending at the response's EOS: the sequence a
    reward model scores (``chat`` as in :func:`tokenize_demonstration`). ``response`` is accepted as another
    name for ``completion``."""
    if isinstance(row, dict) and "prompt" in row and not {"response", "completion", "messages", "text"} & set(row):
        raise where.error("response", "missing: a scored row needs the response (or completion) to its prompt")
    renamed = isinstance(row, dict) and "response" in row and "completion" not in row
    if renamed:
        row = {k: v for k, v in row.items() if k != "response"} | {"completion": row["response"]}
    try:
        example = tokenize_demonstration(row, tokenizer, where, chat=chat)
    except DataFormatError as error:
        if renamed and error.field is not None and error.field.startswith("completion"):
            raise where.error("response" + error.field[len("completion") :], error.problem) from None
        raise
    last = max(i for i, m in enumerate(example.loss_mask) if m)
    return example.input_ids[: last + 1]


class PromptExample(NamedTuple):
    """One tokenized prompt, its text as the model sees it (chat template applied), the text tables show (the
    user's last message; a text prompt's own text), and the row it came from (its prompt fields and
    ``origin``: file and row number), to write it out again."""

    input_ids: list[int]
    text: str
    display: str = ""
    row: dict | None = None


def _origin(row: dict, fields: tuple[str, ...], where: RowLocation) -> dict:
    kept = {k: row[k] for k in fields if k in row and row[k] is not None}
    return {**kept, "origin": {"file": where.source, "row": where.row}}


def _last_request(messages: list[dict]) -> str:
    """The content of the last user message (the last message of any role when there is none)."""
    users = [m for m in messages if m["role"] == "user"]
    return (users or messages)[-1]["content"]


def tokenize_prompt(row: object, tokenizer, where: RowLocation, chat: bool) -> PromptExample:
    """A prompts row (``prompt``: a string or messages; or ``messages``, whose trailing assistant turns are
    dropped) as a :class:`PromptExample`. With ``chat``, a text prompt is the user's turn of the chat template;
    a prompt always ends with the template's generation prompt. Raises ``DataFormatError`` naming the field."""
    if not isinstance(row, dict):
        raise where.error(None, f"expected an object with named fields, got {type_name(row)}")
    if "prompt" in row:
        prompt = row["prompt"]
        if isinstance(prompt, str):
            validate_tools(row, where, conversational=False)
            text = require_text(row, "prompt", where)
            origin = _origin(row, ("prompt",), where)
            if chat:
                return _encode_prompt(tokenizer, text_turns(text), origin, where, text)
            ids = encode_text(tokenizer, text, add_special_tokens=True)
            return PromptExample(ids, text, text, origin)
        if not isinstance(prompt, list):
            raise where.error("prompt", f"expected a string or a list of messages, got {type_name(prompt)}")
        messages = validate_messages(prompt, "prompt", where)
        if messages[-1]["role"] == "assistant":
            raise where.error("prompt", "ends with an assistant message; the policy writes that turn")
        return _chat_prompt(tokenizer, messages, row, where, "prompt")
    if "messages" in row:
        messages = validate_messages(row["messages"], "messages", where)
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()  # a demonstration's answer: the policy writes its own
        if not messages:
            raise where.error("messages", "has no message before the assistant's to use as a prompt")
        return _chat_prompt(tokenizer, messages, row, where, "messages")
    raise where.error(
        "prompt",
        f"missing (the row has fields {sorted(row)}); expected 'prompt' (a string or a list of messages) or 'messages'",
    )


def _chat_prompt(tokenizer, messages: list[dict], row: dict, where: RowLocation, field: str) -> PromptExample:
    conversation = Conversation.of([(field, messages)], validate_tools(row, where))
    origin = _origin({field: messages, "tools": row.get("tools")}, (field, "tools"), where)
    return _encode_prompt(tokenizer, conversation, origin, where, _last_request(messages))


def _encode_prompt(
    tokenizer, conversation: Conversation, origin: dict, where: RowLocation, display: str
) -> PromptExample:
    field = conversation.names[0].split("[")[0]
    encoding, _ = encode_conversation(tokenizer, conversation, where, field, add_generation_prompt=True)
    return PromptExample(encoding.input_ids, encoding.text, display, origin)
