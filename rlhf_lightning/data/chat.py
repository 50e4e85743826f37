"""Conversations through a model's own chat template, tokenized so that every token is where the template put it.

Three guarantees, for any chat template:

- **Assistant spans.** The trained (or scored) tokens of an assistant turn are the text the model writes
  for that turn: from the end of the generation prompt (``add_generation_prompt=True`` on the turns before
  it) or, where the template renders earlier turns differently once the conversation goes on, from the
  start of the turn's own text, through the template's end-of-turn token (the first added token the
  template writes after the turn, ``<|im_end|>`` for ChatML). Template text the model never writes itself
  (a default system prompt injected when the conversation has none, the headers of other turns) is context.
- **Literal control-token text is text.** Message content that spells a special token (``<|im_end|>``,
  ``</s>``, ...) is tokenized as ordinary characters; the only special tokens in a sequence are those the
  template writes (and the EOS appended where a template ends turns without one).
- **Nothing dropped silently.** Tool calls, tool results and a ``tools`` list are rendered by the template
  (``tools=``); a template that leaves any of them out of its text, or that raises, refuses the row with an
  error naming the file, row and field.

The spans are found without assuming how a template is written: each turn is rendered a second and third
time with its content replaced by two different placeholders, and the characters that change are the
turn's own (the longest common prefix and suffix of the renderings bound them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal, NamedTuple

from rlhf_lightning.data.errors import DataFormatError, OptionError, RowLocation, type_name

ROLES = ("system", "user", "assistant", "tool")
ChatTemplateMode = Literal["auto", "always", "never"]
CHAT_TEMPLATE_MODES = ("auto", "always", "never")
_PLACEHOLDERS = ("@", "#")  # two one-character contents that differ in their first and last character


class Conversation(NamedTuple):
    """Validated messages (plain dicts, extra fields such as ``tool_calls`` kept), the row's ``tools``, and
    the field each message came from (``messages[2]``, ``completion[0]``), for error messages."""

    messages: list[dict]
    tools: list[dict] | None
    names: list[str]

    @classmethod
    def of(cls, parts: list[tuple[str, list[dict]]], tools: list[dict] | None = None) -> Conversation:
        """The concatenation of validated message lists, each given with its field name."""
        messages = [m for _, part in parts for m in part]
        names = [f"{field}[{i}]" for field, part in parts for i in range(len(part))]
        return cls(messages, tools, names)


class Encoding(NamedTuple):
    """Token ids, the ``(start, end)`` character span of each token in ``text``, and the text."""

    input_ids: list[int]
    offsets: list[tuple[int, int]]
    text: str


# --- standard text rows on chat models ------------------------------------------------------------------------
def text_rows_as_chat(tokenizer, mode: str, option: str = "chat_template") -> bool:
    """Whether standard text rows go through the tokenizer's chat template: a text ``prompt`` becomes the
    user's turn and a text ``completion`` / ``chosen`` / ``rejected`` / ``responses[i]`` the assistant's
    (:func:`text_turns`), so a chat model trains, scores and answers on the sequences it was tuned for.

    ``auto``: when the tokenizer has a chat template; ``always``: the same, but a tokenizer without one is an
    error; ``never``: prompt and response joined as raw text (TRL's behaviour for standard rows). Rows that
    have no prompt/response boundary (language-modeling ``text`` rows, implicit-prompt pairs given as whole
    texts) are raw text in every mode.

    Raises :class:`OptionError` naming ``option`` for an unknown mode, or ``always`` without a template.
    """
    if mode not in CHAT_TEMPLATE_MODES:
        raise OptionError(f"{option}: expected one of {', '.join(CHAT_TEMPLATE_MODES)}, got {mode!r}")
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if mode == "always" and not has_template:
        raise OptionError(
            f"{option}: 'always', but the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat "
            "template; use 'auto' or 'never' (raw text)"
        )
    return mode != "never" and has_template


def describe_text_rows(chat: bool) -> str:
    """One line for a run's log: how text rows are formatted."""
    if chat:
        return "text rows formatted with the chat template (prompt = user turn, response = assistant turn)"
    return "text rows joined as raw text (no chat template)"


def text_turns(prompt: str, response: str | None = None, response_field: str = "completion") -> Conversation:
    """A text row as a conversation: the prompt as one user message (none when it is blank) and the response,
    if given, as one assistant message; errors name the row's own fields."""
    messages, names = [], []
    if prompt.strip():
        messages.append({"role": "user", "content": prompt})
        names.append("prompt")
    if response is not None:
        messages.append({"role": "assistant", "content": response})
        names.append(response_field)
    return Conversation(messages, None, names)


# --- validating messages -------------------------------------------------------------------------------------
def validate_messages(value: object, field: str, where: RowLocation) -> list[dict]:
    """Check a list of messages in the OpenAI / TRL format and return it as plain dicts.

    ``role`` is one of :data:`ROLES`; ``content`` a string (an assistant message with ``tool_calls`` may have
    none). ``tool_calls`` (assistant) is a list of ``{"type": "function", "function": {"name", "arguments"}}``
    objects, whose ``arguments`` may be given as a JSON string (as the OpenAI API writes them) and are passed
    to the template as an object (as transformers' chat templates expect); OpenAI's older ``function_call``
    becomes one tool call. ``weight`` (OpenAI's fine-tuning format) on an assistant message is 1 (trained, the
    default) or 0 (context only). Fields that are ``null`` (Arrow and Parquet give every message every
    field) are left out; every other field is kept for the template.
    """
    if not isinstance(value, list):
        raise where.error(field, f"expected a list of messages, got {type_name(value)}")
    if not value:
        raise where.error(field, "is an empty list of messages")
    messages = []
    for i, message in enumerate(value):
        name = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise where.error(name, f"expected a message object, got {type_name(message)}")
        message = {k: v for k, v in message.items() if v is not None}
        role = message.get("role")
        if role not in ROLES:
            hint = " (OpenAI's deprecated 'function' role is 'tool' now)" if role == "function" else ""
            raise where.error(f"{name}.role", f"expected one of {ROLES}, got {role!r}{hint}")
        if "function_call" in message:  # OpenAI's deprecated single call: the same as one tool call
            if "tool_calls" in message:
                raise where.error(f"{name}.function_call", "give either function_call or tool_calls, not both")
            message["tool_calls"] = [{"type": "function", "function": message.pop("function_call")}]
        if "weight" in message:
            if role != "assistant" or message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
                problem = f"expected 0 (context only) or 1 (trained) on an assistant message, got {message['weight']!r}"
                raise where.error(f"{name}.weight", problem)
        if "tool_calls" in message:
            if role != "assistant":
                raise where.error(f"{name}.tool_calls", f"only assistant messages make tool calls, not {role!r} ones")
            message["tool_calls"] = _tool_calls(message["tool_calls"], f"{name}.tool_calls", where)
        content = message.setdefault("content", "" if message.get("tool_calls") else None)
        if not isinstance(content, str):
            raise where.error(f"{name}.content", f"expected a string, got {type_name(content)}")
        if role == "assistant" and not content.strip() and not message.get("tool_calls"):
            raise where.error(f"{name}.content", "assistant message is empty")
        messages.append(message)
    return messages


def _tool_calls(value: object, field: str, where: RowLocation) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(call, dict) for call in value):
        raise where.error(field, f"expected a list of tool call objects, got {type_name(value)}")
    calls = []
    for j, call in enumerate(value):
        function = call.get("function", call)
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            expected = 'expected {"type": "function", "function": {"name": ..., "arguments": ...}}'
            raise where.error(f"{field}[{j}]", expected)
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as e:
                raise where.error(f"{field}[{j}].function.arguments", f"is a string but not JSON ({e.msg})") from None
        if not isinstance(arguments, dict):
            raise where.error(f"{field}[{j}].function.arguments", f"expected an object, got {type_name(arguments)}")
        function = {**function, "arguments": arguments}
        flat = "function" not in call  # {"name", "arguments"} without the OpenAI wrapper
        calls.append({"type": "function", "function": function} if flat else {**call, "function": function})
    return calls


def validate_tools(row: dict, where: RowLocation, conversational: bool = True) -> list[dict] | None:
    """The row's ``tools`` (JSON schemas of the functions the assistant may call): a list, or a JSON string
    of one (as datasets with mixed schemas store it); ``None`` when absent. Only a chat template can render
    tools, so a text row (``conversational=False``) with tools is refused rather than trained without them."""
    tools = row.get("tools")
    if tools is None:
        return None
    if not conversational:
        raise where.error(
            "tools", "only message lists can carry tools (the chat template renders them); this row is text"
        )
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise where.error("tools", f"is a string but not JSON ({e.msg})") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise where.error("tools", f"expected a list of tool (function schema) objects, got {type_name(tools)}")
    return tools or None


# --- special tokens ------------------------------------------------------------------------------------------
def _added_tokens(tokenizer) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(special, all)`` texts of the tokenizer's added tokens, longest first. The tokenizer reads these
    as single tokens wherever they appear in text; ``split_special_tokens`` turns that off for the special ones."""
    added = tokenizer.added_tokens_decoder.values()
    everything = sorted({t.content for t in added if t.content}, key=len, reverse=True)
    special = sorted({t.content for t in added if t.content and t.special}, key=len, reverse=True)
    return tuple(special), tuple(everything)


def contains_special_text(tokenizer, text: str) -> bool:
    """Whether ``text`` spells a token the tokenizer would read as a special (control) token."""
    return any(token in text for token in _added_tokens(tokenizer)[0])


def text_fields_spell_control_tokens(tokenizer, row: object) -> bool:
    """Whether a row's plain-text fields (not message lists) spell a control token: often a conversation
    rendered through a chat template by hand, which is then trained as plain characters."""
    if not isinstance(row, dict):
        return False
    texts = [v for v in row.values() if isinstance(v, str)]
    texts += (
        [r for r in row.get("responses", []) if isinstance(r, str)] if isinstance(row.get("responses"), list) else []
    )
    return any(contains_special_text(tokenizer, t) for t in texts)


def encode_text(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    """Token ids of plain text in which control-token spellings are ordinary characters; the tokenizer's own
    special tokens (BOS) are added when ``add_special_tokens``."""
    return tokenizer(text, add_special_tokens=add_special_tokens, split_special_tokens=True)["input_ids"]


def _first_added_token(tokenizer, text: str) -> tuple[int, int] | None:
    """``(start, end)`` of the earliest added-token text in ``text``."""
    best = None
    for token in _added_tokens(tokenizer)[1]:
        at = text.find(token)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, at + len(token))
    return best


# --- rendering -----------------------------------------------------------------------------------------------
def render(
    tokenizer,
    messages: list[dict],
    tools: list[dict] | None,
    add_generation_prompt: bool,
    where: RowLocation,
    field: str,
) -> str:
    """The chat template's text for ``messages``; a template that raises becomes a :class:`DataFormatError`
    naming the row, the field and the template's own message."""
    if tokenizer.chat_template is None:
        raise where.error(field, "message lists need a tokenizer with a chat template; this one has none")
    kwargs = {"tools": tools} if tools else {}
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
    except Exception as error:  # jinja2's TemplateError, or whatever a template's own code raises on this row
        message = str(error) or type(error).__name__
        raise where.error(field, f"the model's chat template refused this conversation: {message}") from None


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _changed_span(text: str, variants: list[str]) -> tuple[int, int]:
    """``(start, end)`` in ``text`` of what differs from every variant: the smallest common prefix and suffix.
    With variants that differ from each other at both ends, this is exactly the text they replaced."""
    start = min(_common_prefix(text, v) for v in variants)
    suffix = min(_common_prefix(text[start:][::-1], v[start:][::-1]) for v in variants)
    return start, len(text) - suffix


def _with(messages: list[dict], i: int, message: dict) -> list[dict]:
    return messages[:i] + [message] + messages[i + 1 :]


class _Renderer:
    """Renders one conversation and its variants, all with the same tools and error location."""

    def __init__(self, tokenizer, conversation: Conversation, where: RowLocation, field: str) -> None:
        self.tokenizer, self.tools, self.where, self.field = tokenizer, conversation.tools, where, field
        self.messages, self.names = conversation.messages, conversation.names

    def __call__(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return render(self.tokenizer, messages, self.tools, add_generation_prompt, self.where, self.field)

    def span(self, text: str, i: int, replace, upto: int | None = None, gen: bool = False) -> tuple[int, int]:
        """Where message ``i`` (``replace(message, placeholder)`` builds its stand-ins) sits in ``text``, the
        rendering of ``messages[:upto]``."""
        messages = self.messages[:upto]
        variants = [self(_with(messages, i, replace(messages[i], p)), gen) for p in _PLACEHOLDERS]
        return _changed_span(text, variants)


def _content_only(message: dict, placeholder: str) -> dict:
    return {**message, "content": placeholder}


def _whole_turn(message: dict, placeholder: str) -> dict:
    return {"role": message["role"], "content": placeholder}


# --- tokenizing ----------------------------------------------------------------------------------------------
def _tokenize(tokenizer, text: str, literal: list[tuple[int, int]], cuts: set[int]) -> Encoding:
    """Tokenize ``text`` in pieces split at the character positions ``cuts`` (where a trained turn starts and
    ends: generation starts on a token boundary, so the prompt is tokenized as generation sees it and a
    reply's leading whitespace never merges with the header's newline). The spans in ``literal`` are
    tokenized with special tokens split into ordinary characters. Pieces end at the template's special
    tokens anyway, so a conversation whose turns start and end at special tokens gets exactly the
    tokenizer's own tokenization of the rendered template."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("chat data needs a fast tokenizer (one with character offsets); this one is not")
    bounds = sorted({0, len(text), *cuts, *(p for span in literal for p in span)})
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for start, end in zip(bounds, bounds[1:]):
        split = any(a <= start and end <= b for a, b in literal)
        enc = tokenizer(
            text[start:end], add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=split
        )
        ids += enc["input_ids"]
        offsets += [(a + start, b + start) for a, b in enc["offset_mapping"]]
    return Encoding(ids, offsets, text)


def encode_conversation(
    tokenizer,
    conversation: Conversation,
    where: RowLocation,
    field: str,
    add_generation_prompt: bool = False,
    train_from: int | None = None,
) -> tuple[Encoding, list[bool]]:
    """Render and tokenize a conversation; returns the encoding and a loss mask over its tokens.

    ``train_from``: assistant turns at this message index or later are marked for loss (``None``: none are).
    ``loss_mask[i]`` is True when token ``i`` is a target. When the last message is a trained assistant turn
    and the template wrote no end-of-turn token after it, the tokenizer's EOS is appended (and trained), so
    the model learns to stop.

    Raises :class:`DataFormatError` (naming ``field``) when the template raises, leaves a tool call, a tool
    result or the tools list out of its text, does not render a trained turn's content, or places content
    with control-token spellings where it cannot be kept apart from the template's own text.
    """
    if add_generation_prompt and train_from is not None:
        raise ValueError("a conversation with a generation prompt is a prompt: it has no trained turns")
    renderer = _Renderer(tokenizer, conversation, where, field)
    messages = conversation.messages
    text = renderer(messages, add_generation_prompt)
    _check_nothing_dropped(renderer, text, add_generation_prompt)
    literal = []
    for i, message in enumerate(messages):
        if contains_special_text(tokenizer, message["content"]):
            start, end = renderer.span(text, i, _content_only, gen=add_generation_prompt)
            if message["content"].strip() not in text[start:end]:
                raise where.error(
                    f"{conversation.names[i]}.content",
                    "spells a control token, and the chat template changes the content, so it cannot be kept as text",
                )
            literal.append((start, end))
        for key in ("tool_calls", "name", "tool_call_id"):
            if key in message and contains_special_text(tokenizer, json.dumps(message[key])):
                problem = "spells a control token of this tokenizer; remove it"
                raise where.error(f"{conversation.names[i]}.{key}", problem)
    if conversation.tools and contains_special_text(tokenizer, json.dumps(conversation.tools)):
        raise where.error("tools", "spells a control token of this tokenizer; remove it")
    spans, last_ended, last_trained = [], True, None
    for i, message in enumerate(messages if train_from is not None else []):
        if message["role"] == "assistant" and i >= train_from and message.get("weight", 1) == 1:
            start, end, last_ended = _assistant_span(renderer, text, i)
            spans.append((start, end))
            last_trained = i
    if train_from is not None and not spans:
        raise where.error(field, "has no assistant message to learn from (or every one has weight 0)")
    encoding = _tokenize(tokenizer, text, literal, {p for span in spans for p in span})
    loss_mask = [False] * len(encoding.input_ids)
    for j, (a, b) in enumerate(encoding.offsets):
        if b > a and any(a < end and b > start for start, end in spans):
            loss_mask[j] = True
    if last_trained == len(messages) - 1 and not last_ended:
        encoding = Encoding([*encoding.input_ids, tokenizer.eos_token_id], [*encoding.offsets, (len(text),) * 2], text)
        loss_mask.append(True)
    return encoding, loss_mask


def _assistant_span(renderer: _Renderer, text: str, i: int) -> tuple[int, int, bool]:
    """``(start, end, ended)``: the characters of ``text`` the model writes for assistant turn ``i``, and
    whether they end with an end-of-turn token."""
    messages, where = renderer.messages, renderer.where
    start, end = renderer.span(text, i, _whole_turn)
    if start >= end:
        raise where.error(renderer.names[i], "the chat template does not render this assistant turn's content")
    if i > 0:  # the model writes everything after the generation prompt, when earlier turns render the same
        try:
            prompt = renderer(messages[:i], add_generation_prompt=True)
        except DataFormatError:
            prompt = None
        if prompt is not None and text.startswith(prompt) and len(prompt) <= start:
            start = len(prompt)
    # The turn's closing text as the template writes it when the conversation stops after this turn.
    if i == len(messages) - 1:
        footer = text[end:]
    else:
        alone = renderer(messages[: i + 1])
        footer = alone[renderer.span(alone, i, _whole_turn, upto=i + 1)[1] :]
    token = _first_added_token(renderer.tokenizer, footer)
    if token is not None and text.startswith(footer[: token[1]], end):
        return start, end + token[1], True
    if token is None and text.startswith(footer, end):  # no end-of-turn token: the turn's whole closing text
        return start, end + len(footer), False
    return start, end, False


def _check_nothing_dropped(renderer: _Renderer, text: str, gen: bool) -> None:
    """Refuse a conversation whose tools, tool calls or tool results the template leaves out of its text."""
    messages, where = renderer.messages, renderer.where
    without_tools = render(renderer.tokenizer, messages, None, gen, where, renderer.field) if renderer.tools else None
    if without_tools == text:
        raise where.error(
            "tools",
            "the model's chat template ignores the tools list (it renders the same without it): use a model "
            "whose template supports tools, or leave the field out",
        )
    for i, message in enumerate(messages):
        name = renderer.names[i]
        if message.get("tool_calls"):
            without = {k: v for k, v in message.items() if k != "tool_calls"}
            if renderer(_with(messages, i, without), gen) == text:
                raise where.error(
                    f"{name}.tool_calls",
                    "the model's chat template does not render tool calls (it renders the same without them): "
                    "use a model whose template supports tools, or write the call into the content",
                )
        if message["role"] == "tool":
            a, b = (renderer(_with(messages, i, _content_only(message, p)), gen) for p in _PLACEHOLDERS)
            if a == b:
                raise where.error(name, "the model's chat template does not render tool messages")


def end_of_turn_token_id(tokenizer) -> int | None:
    """The token the chat template writes right after an assistant turn (``<|im_end|>``, Llama-3's
    ``<|eot_id|>``, Gemma's ``<end_of_turn>``), or ``None`` without a template or when the template closes a
    turn with plain text only. The model writes this token to end its answer."""
    if getattr(tokenizer, "chat_template", None) is None:
        return None
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    conversation = Conversation.of([("messages", messages)])
    renderer = _Renderer(tokenizer, conversation, RowLocation("the chat template", 1), "messages")
    try:
        text = renderer(messages)
        _, end, ended = _assistant_span(renderer, text, 1)
    except DataFormatError:
        return None
    if not ended:
        return None
    content_end = renderer.span(text, 1, _whole_turn)[1]
    start, stop = _first_added_token(tokenizer, text[content_end:end])
    return tokenizer.convert_tokens_to_ids(text[content_end + start : content_end + stop])


def stop_token_ids(
    tokenizer, generation_eos: Sequence[int] = (), extra: Sequence[str] = (), option: str = "stop_tokens"
) -> list[int]:
    """The token ids that end a response, sorted: the tokenizer's EOS, ``generation_eos`` (the EOS ids of the
    model's generation config), the chat template's end-of-turn token (:func:`end_of_turn_token_id`), and
    the ``extra`` token texts.

    Raises :class:`OptionError` naming ``option`` when an ``extra`` text is not exactly one token of this
    tokenizer, or is read as its unknown token.
    """
    ids = {tokenizer.eos_token_id, end_of_turn_token_id(tokenizer), *generation_eos}
    for text in extra:
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"] if isinstance(text, str) and text else []
        if len(tokens) != 1:
            raise OptionError(
                f"{option}: {text!r} is {len(tokens)} tokens for this tokenizer ({tokens}); each stop token must be "
                "exactly one token (a special token such as <|eot_id|>, or a single character)"
            )
        if tokens[0] == tokenizer.unk_token_id and text != tokenizer.unk_token:
            raise OptionError(
                f"{option}: {text!r} is not in this tokenizer's vocabulary (it reads as the unknown token)"
            )
        ids.add(tokens[0])
    return sorted(i for i in ids if i is not None)
