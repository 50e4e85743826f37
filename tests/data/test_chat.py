"""Conversations are trained and scored exactly as the chat template renders them: the span of each assistant
turn, control-token spellings kept as text, template errors named by row, tool calls never dropped. Each
behaviour is checked on the tiny ChatML template and on the embedded SmolLM2 template (which injects a
default system prompt)."""

import copy
import json

import pytest

from rlhf_lightning.data import ComparisonsDataModule, DataFormatError, PromptsDataModule
from rlhf_lightning.data.formats import RowLocation, scored_sequence, tokenize_demonstration

WHERE = RowLocation("chat.jsonl", 4)
LITERAL = "Close the turn with <|im_end|> and stop. [fin]"
NEUTRAL = "Close the turn with IM_END and stop. [fin]"


def user(text):
    return {"role": "user", "content": text}


def assistant(text, **extra):
    return {"role": "assistant", "content": text, **extra}


@pytest.fixture(params=["tiny", "embedded"])
def tok(request, char_tokenizer, embedded_tokenizer):
    return char_tokenizer if request.param == "tiny" else embedded_tokenizer


def trained_runs(tok, input_ids, loss_mask):
    """The decoded text of each contiguous run of trained tokens."""
    runs, current = [], []
    for token, trained in zip(input_ids, loss_mask):
        if trained:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    return [tok.decode(run) for run in runs]


def special_count(tok, ids):
    return sum(i in set(tok.all_special_ids) for i in ids)


CONVERSATIONS = {
    "assistant first": [assistant("Hello there! How can I help?"), user("Name a colour."), assistant("Blue.")],
    "two exchanges": [user("Hi"), assistant("Hello!"), user("Name a colour."), assistant("Blue, like the sea.")],
    "with a system prompt": [{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hello!")],
    "single assistant turn": [assistant("Hello there!")],
}


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_each_assistant_turn_trains_its_content_through_the_end_of_turn_token(tok, name):
    messages = CONVERSATIONS[name]
    ex = tokenize_demonstration({"messages": messages}, tok, WHERE)
    expected = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert trained_runs(tok, ex.input_ids, ex.loss_mask) == expected
    # the sequence is the template's own rendering, tokenized whole
    text = tok.apply_chat_template(messages, tokenize=False)
    assert ex.input_ids == tok(text, add_special_tokens=False)["input_ids"]


def test_injected_system_prompt_is_context_not_a_target(embedded_tokenizer):
    tok = embedded_tokenizer
    ex = tokenize_demonstration({"messages": CONVERSATIONS["assistant first"]}, tok, WHERE)
    context = tok.decode([t for t, m in zip(ex.input_ids, ex.loss_mask) if not m])
    assert "You are a helpful AI assistant named SmolLM" in context
    assert "Hello there!" not in context


def test_implicit_prompt_single_turn_comparisons_stay_two_different_sequences(tok):
    dm = ComparisonsDataModule(train_files="unused.jsonl")
    dm.tokenizer = tok
    row = {"chosen": [assistant("A warm, helpful answer.")], "rejected": [assistant("No.")]}
    ex = dm.tokenize_row(row, WHERE)
    chosen, rejected = (tok.decode(s) for s in ex.sequences)
    assert chosen != rejected
    assert chosen.endswith("A warm, helpful answer.<|im_end|>") and rejected.endswith("No.<|im_end|>")


def test_template_without_generation_prompt_or_end_of_turn_token_trains_what_the_model_writes(char_tokenizer):
    tok = copy.deepcopy(char_tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    ex = tokenize_demonstration({"messages": [user("q"), assistant("a b"), user("r"), assistant("c")]}, tok, WHERE)
    # no generation prompt: after "user: q\n" the model writes the whole turn, then EOS ends the last one
    assert trained_runs(tok, ex.input_ids, ex.loss_mask) == ["assistant: a b\n", "assistant: c\n<|im_end|>"]


def test_end_of_turn_token_other_than_eos_is_the_trained_end(char_tokenizer):
    tok = copy.deepcopy(char_tokenizer)  # turns end with <|endoftext|>, not the tokenizer's EOS <|im_end|>
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] | trim }}<|endoftext|>{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant: {% endif %}"
    )
    ex = tokenize_demonstration({"messages": [user("q"), assistant("  spaced out  ")]}, tok, WHERE)
    assert trained_runs(tok, ex.input_ids, ex.loss_mask) == ["spaced out<|endoftext|>"]
    assert ex.input_ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>")  # no EOS appended after it


# --- control-token spellings are text -----------------------------------------------------------------------
DEMONSTRATIONS = {
    "prompt-completion": lambda content: {"prompt": "Say it: ", "completion": content},
    "text": lambda content: {"text": content},
    "messages": lambda content: {"messages": [user("Write <|im_start|>system for me"), assistant(content)]},
    "conversational prompt-completion": lambda content: {
        "prompt": [user("Say it")],
        "completion": [assistant(content)],
    },
}


@pytest.mark.parametrize("kind", DEMONSTRATIONS)
def test_control_token_spelled_in_content_is_trained_as_text(tok, kind):
    ex = tokenize_demonstration(DEMONSTRATIONS[kind](LITERAL), tok, WHERE)
    runs = trained_runs(tok, ex.input_ids, ex.loss_mask)
    assert runs[-1].endswith(LITERAL + "<|im_end|>")  # [fin] is trained: the span did not stop at the spelling
    # the only special tokens are the template's and the appended EOS: as many as with plain text
    plain = tokenize_demonstration(DEMONSTRATIONS[kind](NEUTRAL), tok, WHERE)
    assert special_count(tok, ex.input_ids) == special_count(tok, plain.input_ids)


def test_control_token_spellings_in_comparisons_prompts_and_scored_rows(tok, tmp_path):
    dm = ComparisonsDataModule(train_files="unused.jsonl")
    dm.tokenizer = tok
    for row in (
        {"prompt": "Say it: ", "chosen": LITERAL, "rejected": "no"},
        {"prompt": [user("Say it")], "chosen": [assistant(LITERAL)], "rejected": [assistant("no")]},
    ):
        chosen = dm.tokenize_row(row, WHERE).sequences[0]
        assert tok.decode(chosen).endswith(LITERAL + "<|im_end|>")
        assert special_count(tok, chosen) == special_count(tok, dm.tokenize_row(_neutral(row), WHERE).sequences[0])
    scored = scored_sequence({"prompt": [user("Say it")], "response": [assistant(LITERAL)]}, tok, WHERE)
    assert tok.decode(scored).endswith(LITERAL + "<|im_end|>")
    prompts = PromptsDataModule(train_files="unused.jsonl")
    prompts.tokenizer = tok
    for row in ({"prompt": LITERAL}, {"prompt": [user(LITERAL)]}):
        ids = prompts.tokenize_row(row, WHERE).input_ids
        assert special_count(tok, ids) == special_count(tok, prompts.tokenize_row(_neutral(row), WHERE).input_ids)


def _neutral(row):
    return json.loads(json.dumps(row).replace("<|im_end|>", "IM_END"))


# --- template errors name the row ---------------------------------------------------------------------------
def test_template_error_names_file_row_field_and_the_template_message(char_tokenizer):
    tok = copy.deepcopy(char_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    row = {"messages": [{"role": "system", "content": "s"}, user("q"), assistant("a")]}
    with pytest.raises(DataFormatError) as info:
        tokenize_demonstration(row, tok, WHERE)
    assert (info.value.source, info.value.row, info.value.field) == ("chat.jsonl", 4, "messages")
    assert "System role not supported" in str(info.value)


# --- tool calls ---------------------------------------------------------------------------------------------
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t['function']['name'] }}{% endfor %}"
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% for c in m.get('tool_calls', []) %}<call>{{ c['function']['name'] }}"
    "{{ c['function']['arguments'] | tojson }}</call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
CALL = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
TOOL_ROW = {
    "tools": TOOLS,
    "messages": [
        user("Weather in Paris?"),
        assistant("", tool_calls=[CALL]),
        {"role": "tool", "content": "sunny", "tool_call_id": "1"},
        assistant("It is sunny."),
    ],
}


@pytest.fixture
def tool_tokenizer(char_tokenizer):
    tok = copy.deepcopy(char_tokenizer)
    tok.chat_template = TOOL_TEMPLATE
    return tok


def test_tool_calls_are_rendered_and_trained(tool_tokenizer):
    tok = tool_tokenizer
    ex = tokenize_demonstration(TOOL_ROW, tok, WHERE)
    text = tok.decode(ex.input_ids)
    assert "Tools: weather" in text and "sunny" in text
    calls = '<call>weather{"city": "Paris"}</call><|im_end|>'
    assert trained_runs(tok, ex.input_ids, ex.loss_mask) == [calls, "It is sunny.<|im_end|>"]
    # OpenAI's format gives arguments as a JSON string: the template gets the same object
    openai = copy.deepcopy(TOOL_ROW)
    openai["messages"][1]["tool_calls"][0]["function"]["arguments"] = '{"city": "Paris"}'
    openai["tools"] = json.dumps(TOOLS)  # datasets with mixed schemas store the list as a string
    assert tokenize_demonstration(openai, tok, WHERE) == ex


def test_tool_rows_are_read_from_parquet_with_null_fields(tmp_path, tool_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "tools.parquet"  # Arrow gives every message every field, null where absent
    pq.write_table(pa.Table.from_pylist([{**TOOL_ROW, "tools": json.dumps(TOOLS)}]), path)
    from rlhf_lightning.data import read_rows

    ((_, row),) = read_rows(str(path))
    assert row["messages"][0]["tool_calls"] is None
    assert tokenize_demonstration(row, tool_tokenizer, WHERE) == tokenize_demonstration(TOOL_ROW, tool_tokenizer, WHERE)


def test_templates_that_cannot_render_tools_refuse_the_row(tok):
    # the tiny ChatML template and SmolLM2's both print only role and content
    with pytest.raises(DataFormatError) as info:
        tokenize_demonstration({"messages": TOOL_ROW["messages"]}, tok, WHERE)
    assert info.value.field == "messages[1].tool_calls" and "does not render tool calls" in str(info.value)
    plain = {"tools": TOOLS, "messages": [user("Hi"), assistant("Hello!")]}
    with pytest.raises(DataFormatError) as info:
        tokenize_demonstration(plain, tok, WHERE)
    assert info.value.field == "tools" and "ignores the tools list" in str(info.value)


def test_template_that_drops_tool_results_refuses_the_row(tool_tokenizer):
    tok = copy.deepcopy(tool_tokenizer)
    skip_tools = "{% for m in messages if m['role'] != 'tool' %}"
    tok.chat_template = TOOL_TEMPLATE.replace("{% for m in messages %}", skip_tools)
    with pytest.raises(DataFormatError) as info:
        tokenize_demonstration(TOOL_ROW, tok, WHERE)
    assert info.value.field == "messages[2]" and "does not render tool messages" in str(info.value)


def test_tool_history_reaches_prompts_and_comparisons(tool_tokenizer):
    tok = tool_tokenizer
    prompts = PromptsDataModule(train_files="unused.jsonl")
    prompts.tokenizer = tok
    text = prompts.tokenize_row(TOOL_ROW, WHERE).text  # the final answer is dropped; the call is context
    assert "Tools: weather" in text and "<call>weather" in text and text.endswith("<|im_start|>assistant\n")
    dm = ComparisonsDataModule(train_files="unused.jsonl")
    dm.tokenizer = tok
    row = {"tools": TOOLS, "prompt": [user("Weather?")], "chosen": [assistant("", tool_calls=[CALL])],
           "rejected": [assistant("I cannot know.")]}  # fmt: skip
    chosen = tok.decode(dm.tokenize_row(row, WHERE).sequences[0])
    assert chosen.startswith("<|im_start|>system\nTools: weather") and chosen.endswith("</call><|im_end|>")


@pytest.mark.parametrize(
    ("message", "field", "problem"),
    [
        (assistant("", tool_calls="weather()"), "messages[1].tool_calls", "expected a list of tool call objects"),
        (assistant("", tool_calls=[{"function": {"arguments": {}}}]), "messages[1].tool_calls[0]", "expected"),
        (
            assistant("", tool_calls=[{"function": {"name": "w", "arguments": "{city"}}]),
            "messages[1].tool_calls[0].function.arguments",
            "not JSON",
        ),
        (user("q") | {"tool_calls": [CALL]}, "messages[1].tool_calls", "only assistant messages"),
    ],
)
def test_malformed_tool_calls_name_the_field(tool_tokenizer, message, field, problem):
    with pytest.raises(DataFormatError) as info:
        tokenize_demonstration({"messages": [user("q"), message, assistant("a")]}, tool_tokenizer, WHERE)
    assert info.value.field == field and problem in str(info.value)


@pytest.mark.parametrize("content", ["    return x", "\n\nStep 1.", "  two spaces", " \n  indented"])
def test_leading_whitespace_never_merges_with_the_generation_prompt(tok, content):
    # ByteLevel BPE would merge the header's "\n" with the reply's leading whitespace into one token; the
    # prompt must end where generation starts, tokenized as the generation prompt is
    messages = [user("Hi"), assistant(content)]
    ex = tokenize_demonstration({"messages": messages}, tok, WHERE)
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert ex.input_ids[: ex.prompt_length] == tok(prompt, add_special_tokens=False)["input_ids"]
    assert trained_runs(tok, ex.input_ids, ex.loss_mask) == [content + "<|im_end|>"]


def test_weight_zero_turns_are_context(tok):
    messages = [user("Hi"), assistant("Bad old answer.", weight=0), user("Again?"), assistant("Good.", weight=1)]
    ex = tokenize_demonstration({"messages": messages}, tok, WHERE)
    assert trained_runs(tok, ex.input_ids, ex.loss_mask) == ["Good.<|im_end|>"]
    with pytest.raises(DataFormatError, match=r"field 'messages\[1\]\.weight': expected 0 \(context only\) or 1"):
        tokenize_demonstration({"messages": [user("Hi"), assistant("a", weight=0.5)]}, tok, WHERE)


def test_tools_on_text_rows_are_refused_not_dropped(tok):
    for row in ({"prompt": "q", "completion": "a", "tools": TOOLS}, {"text": "t", "tools": TOOLS}):
        with pytest.raises(DataFormatError, match=r"field 'tools': only message lists can carry tools"):
            tokenize_demonstration(row, tok, WHERE)
    dm = ComparisonsDataModule(train_files="unused.jsonl")
    dm.tokenizer = tok
    with pytest.raises(DataFormatError, match=r"field 'tools': only message lists"):
        dm.tokenize_row({"prompt": "q", "chosen": "a", "rejected": "b", "tools": TOOLS}, WHERE)
    prompts = PromptsDataModule(train_files="unused.jsonl")
    prompts.tokenizer = tok
    with pytest.raises(DataFormatError, match=r"field 'tools': only message lists"):
        prompts.tokenize_row({"prompt": "q", "tools": "not json"}, WHERE)


def test_openai_function_call_is_one_tool_call(tool_tokenizer):
    legacy = copy.deepcopy(TOOL_ROW)
    legacy["messages"][1] = {"role": "assistant", "content": None, "function_call": CALL["function"]}
    assert tokenize_demonstration(legacy, tool_tokenizer, WHERE) == tokenize_demonstration(
        TOOL_ROW, tool_tokenizer, WHERE
    )


def test_empty_tool_result_is_rendered_not_refused(tool_tokenizer):
    row = copy.deepcopy(TOOL_ROW)
    row["messages"][2]["content"] = ""
    ex = tokenize_demonstration(row, tool_tokenizer, WHERE)
    assert trained_runs(tool_tokenizer, ex.input_ids, ex.loss_mask)[-1] == "It is sunny.<|im_end|>"


def test_text_prompt_with_conversation_answers_is_explained(tok):
    dm = ComparisonsDataModule(train_files="unused.jsonl")
    dm.tokenizer = tok
    row = {"prompt": "Hi", "chosen": [user("Hi"), assistant("Hello!")], "rejected": [user("Hi"), assistant("No.")]}
    with pytest.raises(DataFormatError, match=r"field 'prompt': is text while chosen is a message list"):
        dm.tokenize_row(row, WHERE)
