"""Every accepted format gives the expected token ids and loss mask (one token per character here)."""

import copy

import pytest

from rlhf_lightning.data.errors import DataFormatError
from rlhf_lightning.data.formats import RowLocation, tokenize_demonstration, truncate

WHERE = RowLocation("data.jsonl", 7)


def ids(tok, text):
    return [tok.convert_tokens_to_ids(c) for c in text]


def special(tok, name):
    return tok.convert_tokens_to_ids(name)


def test_prompt_completion_trains_on_completion_and_eos(char_tokenizer):
    tok = char_tokenizer
    ex = tokenize_demonstration({"prompt": "Q:", "completion": "ab"}, tok, WHERE)
    eos = tok.eos_token_id
    assert ex.input_ids == ids(tok, "Q:") + ids(tok, "ab") + [eos]
    assert ex.loss_mask == [False, False, True, True, True]
    assert ex.prompt_length == 2


def test_completion_only_loss_can_be_switched_off(char_tokenizer):
    ex = tokenize_demonstration({"prompt": "Q:", "completion": "ab"}, char_tokenizer, WHERE, completion_only_loss=False)
    assert ex.loss_mask == [True] * 5


def test_text_trains_on_everything_plus_eos(char_tokenizer):
    tok = char_tokenizer
    ex = tokenize_demonstration({"text": "hi"}, tok, WHERE)
    assert ex.input_ids == ids(tok, "hi") + [tok.eos_token_id]
    assert ex.loss_mask == [True, True, True]


def test_messages_train_on_assistant_turns_through_eos_only(char_tokenizer):
    tok = char_tokenizer
    row = {
        "messages": [
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "v"},
            {"role": "assistant", "content": "bc"},
        ]
    }
    ex = tokenize_demonstration(row, tok, WHERE)
    start, end, nl = special(tok, "<|im_start|>"), tok.eos_token_id, ids(tok, "\n")
    turn = lambda role, text: [start] + ids(tok, role) + nl + ids(tok, text) + [end] + nl  # noqa: E731
    assert ex.input_ids == turn("user", "u") + turn("assistant", "a") + turn("user", "v") + turn("assistant", "bc")
    # trained: "a" + EOS of turn 2, "bc" + EOS of turn 4; never the header, user text or trailing newline
    trained = [t for t, m in zip(ex.input_ids, ex.loss_mask) if m]
    assert trained == ids(tok, "a") + [end] + ids(tok, "bc") + [end]
    first_assistant_content = len(turn("user", "u")) + len([start] + ids(tok, "assistant") + nl)
    assert ex.prompt_length == first_assistant_content


def test_conversational_prompt_completion_trains_on_completion_only(char_tokenizer):
    tok = char_tokenizer
    row = {
        "prompt": [
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": "v"},
        ],
        "completion": [{"role": "assistant", "content": "ok"}],
    }
    ex = tokenize_demonstration(row, tok, WHERE)
    trained = [t for t, m in zip(ex.input_ids, ex.loss_mask) if m]
    assert trained == ids(tok, "ok") + [tok.eos_token_id]  # the earlier assistant turn "x" is context
    prompt_text = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert ex.input_ids[: ex.prompt_length] == tok(prompt_text, add_special_tokens=False)["input_ids"]


def test_truncate_keeps_the_start_and_needs_a_target(char_tokenizer):
    ex = tokenize_demonstration({"prompt": "Q:", "completion": "abc"}, char_tokenizer, WHERE)
    cut = truncate(ex, 4)
    assert cut.input_ids == ex.input_ids[:4] and cut.loss_mask == [False, False, True, True]
    assert truncate(ex, 2) is None  # only prompt tokens left


@pytest.mark.parametrize(
    ("row", "field", "problem"),
    [
        ({"prompt": "q", "completion": ""}, "completion", "is empty"),
        ({"prompt": "q", "completion": "   "}, "completion", "is empty"),
        ({"prompt": "q", "completion": 3}, "completion", "expected a string, got int"),
        ({"prompt": None, "completion": "a"}, "prompt", "expected a string, got null"),
        ({"prompt": "q"}, "completion", "missing"),
        ({"text": ["a"]}, "text", "expected a string, got list"),
        ({"question": "q", "answer": "a"}, None, "no recognised fields"),
        ({"messages": "hello"}, "messages", "expected a list of messages"),
        ({"messages": []}, "messages", "empty list"),
        ({"messages": [{"role": "user", "content": "q"}]}, "messages", "no assistant message"),
        ({"messages": [{"role": "bot", "content": "q"}]}, "messages[0].role", "expected one of"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "expected a string"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
            "messages[1].content",
            "assistant message is empty",
        ),
        ({"prompt": [{"role": "user", "content": "q"}], "completion": "a"}, "completion", "both be strings or both"),
        (
            {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "user", "content": "a"}]},
            "completion",
            "no assistant message",
        ),
        (["not", "an", "object"], None, "expected an object"),
    ],
)
def test_bad_rows_name_file_row_and_field(char_tokenizer, row, field, problem):
    with pytest.raises(DataFormatError) as info:
        tokenize_demonstration(row, char_tokenizer, WHERE)
    err = info.value
    assert (err.source, err.row, err.field) == ("data.jsonl", 7, field)
    assert problem in str(err)
    assert str(err).startswith("data.jsonl, row 7" + (f", field '{field}'" if field else ""))


def test_template_that_renders_earlier_turns_differently_still_trains_each_turn(char_tokenizer):
    odd = copy.deepcopy(char_tokenizer)
    # numbers each turn by the conversation length: a prefix renders differently from the whole
    odd.chat_template = "{% for m in messages %}{{ messages|length }}{{ m['content'] }}{% endfor %}"
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    ex = tokenize_demonstration(row, odd, WHERE)
    assert ex.input_ids == ids(odd, "2q2a") + [odd.eos_token_id]
    assert [t for t, m in zip(ex.input_ids, ex.loss_mask) if m] == ids(odd, "a") + [odd.eos_token_id]


def test_eos_is_appended_when_the_template_does_not_end_turns_with_it(char_tokenizer):
    tok = copy.deepcopy(char_tokenizer)
    tok.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    ex = tokenize_demonstration(row, tok, WHERE)
    assert ex.input_ids == ids(tok, "[q][a]") + [tok.eos_token_id]
    assert [t for t, m in zip(ex.input_ids, ex.loss_mask) if m] == ids(tok, "[a]") + [tok.eos_token_id]
