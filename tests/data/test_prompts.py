"""Prompt rows for the PPO stage: token ids, chat rendering, errors, length policy, left padding (one token
per character)."""

import pytest

from rlhf_lightning.data import DataFormatError, PromptsDataModule, read_rows
from rlhf_lightning.models.tiny import build_char_tokenizer
from tests.helpers import write_jsonl

USER = [{"role": "user", "content": "Review the Blue Kettle."}]
ANSWER = [{"role": "assistant", "content": "Lovely coffee."}]


def setup_prompts(tmp_path, tokenizer, rows, **kwargs):
    kwargs.setdefault("val_fraction", 0.0)
    dm = PromptsDataModule(train_files=write_jsonl(tmp_path / "p.jsonl", rows), **kwargs)
    dm.tokenizer = tokenizer
    dm.setup("fit")
    return dm


def chat_ids(tok, messages):
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def test_text_and_message_prompts(tmp_path, char_tokenizer):
    tok = char_tokenizer
    dm = setup_prompts(tmp_path, tok, [{"prompt": "Q: why?"}, {"prompt": USER}])
    text, chat = dm.train_examples
    # a chat model gets a text prompt as the user's turn, with the generation prompt (chat_template: auto)
    assert text.input_ids == chat_ids(tok, [{"role": "user", "content": "Q: why?"}])
    assert text.text.endswith("<|im_start|>assistant\n") and text.display == "Q: why?"
    assert text.row == {"prompt": "Q: why?", "origin": text.row["origin"]}  # written out as the user gave it
    raw = setup_prompts(tmp_path, tok, [{"prompt": "Q: why?"}], chat_template="never").train_examples[0]
    assert raw.input_ids == tok("Q: why?", add_special_tokens=True)["input_ids"] and raw.text == "Q: why?"
    assert chat.input_ids == chat_ids(tok, USER)
    assert chat.text.endswith("<|im_start|>assistant\n") and "Review the Blue Kettle." in chat.text
    assert dm.example_length(chat) == len(chat.input_ids)


def test_demonstration_and_comparison_rows_are_reused_as_prompts(tmp_path, char_tokenizer):
    tok = char_tokenizer
    system = [{"role": "system", "content": "Be brief."}]
    rows = [
        {"messages": system + USER + ANSWER},  # the demonstration's answer is dropped
        {"messages": USER + ANSWER + USER + ANSWER + ANSWER},  # only the trailing assistant turns go
        {"prompt": USER, "chosen": ANSWER, "rejected": [{"role": "assistant", "content": "Meh."}]},
        {"prompt": "Q:", "completion": "A"},
    ]
    dm = setup_prompts(tmp_path, tok, rows)
    assert [e.input_ids for e in dm.train_examples] == [
        chat_ids(tok, system + USER),
        chat_ids(tok, USER + ANSWER + USER),
        chat_ids(tok, USER),
        chat_ids(tok, [{"role": "user", "content": "Q:"}]),
    ]


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"question": "hi"}, r"row 2, field 'prompt': missing \(the row has fields \['question'\]\)"),
        ({"prompt": 3}, r"row 2, field 'prompt': expected a string or a list of messages, got int"),
        ({"prompt": None}, r"row 2, field 'prompt': expected a string or a list of messages, got null"),
        ({"prompt": "  "}, r"row 2, field 'prompt': is empty"),
        ({"prompt": USER + ANSWER}, r"row 2, field 'prompt': ends with an assistant message"),
        ({"prompt": [{"role": "bot", "content": "x"}]}, r"row 2, field 'prompt\[0\]\.role': expected one of"),
        ({"prompt": []}, r"row 2, field 'prompt': is an empty list of messages"),
        ({"messages": ANSWER}, r"row 2, field 'messages': has no message before the assistant's"),
        (["hi"], r"row 2: expected an object with named fields, got list"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, char_tokenizer, row, expected):
    with pytest.raises(DataFormatError, match=r"p\.jsonl, " + expected):
        setup_prompts(tmp_path, char_tokenizer, [{"prompt": "fine"}, row])


def test_message_prompts_need_a_chat_template(tmp_path):
    tok = build_char_tokenizer()
    tok.chat_template = None
    with pytest.raises(DataFormatError, match=r"p\.jsonl, row 1, field 'messages': .* chat template"):
        setup_prompts(tmp_path, tok, [{"messages": USER}])


def test_overlong_prompts_are_dropped_or_keep_their_end(tmp_path, char_tokenizer):
    tok = char_tokenizer
    rows = [{"prompt": "short"}, {"prompt": "abcdefghijklmnop"}, {"prompt": USER}]
    dropped = setup_prompts(tmp_path, tok, rows, max_length=13, chat_template="never")
    assert [e.text for e in dropped.train_examples] == ["short"]
    assert dropped.stats["dropped overlong"] == 2

    cut = setup_prompts(tmp_path, tok, rows, max_length=13, overlong="truncate", chat_template="never")
    assert cut.stats["truncated"] == 2
    short, text, chat = cut.train_examples
    assert short.text == "short"
    assert text.text == "defghijklmnop" and text.input_ids == tok("defghijklmnop")["input_ids"]
    assert chat.input_ids == chat_ids(tok, USER)[-13:]  # the generation prompt survives
    assert chat.text == "<|im_end|>\n<|im_start|>assistant\n"  # 3 special/newline tokens + "assistant\n"
    assert tok(chat.text, add_special_tokens=False)["input_ids"] == chat.input_ids


def test_collate_left_pads_with_masks_from_lengths(tmp_path, char_tokenizer):
    tok = char_tokenizer
    dm = setup_prompts(tmp_path, tok, [{"prompt": "abc"}, {"prompt": "a"}, {"prompt": USER}], shuffle=False)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "prompt_text"}
    assert batch["prompt_text"] == ["abc", "a", USER[-1]["content"]]  # what tables show: the user's own words
    lengths = [len(e.input_ids) for e in dm.train_examples]
    assert batch["input_ids"].shape == (3, max(lengths))
    mask = batch["attention_mask"]
    assert mask[:, -1].tolist() == [1, 1, 1]
    assert mask.sum(1).tolist() == lengths
    for row, example in zip(batch["input_ids"].tolist(), dm.train_examples):
        pad = len(row) - len(example.input_ids)
        assert row[pad:] == example.input_ids and row[:pad] == [tok.pad_token_id] * pad


def test_held_out_split_and_sample_prompts(tmp_path, char_tokenizer):
    rows = [{"prompt": f"prompt {i}"} for i in range(10)]
    dm = setup_prompts(tmp_path, char_tokenizer, rows, val_fraction=0.2, split_seed=3)
    assert len(dm.val_examples) == 2 and len(dm.train_examples) == 8
    val, train = {e.text for e in dm.val_examples}, {e.text for e in dm.train_examples}
    assert not val & train and len(val | train) == 10
    assert dm.sample_prompts(2) == [e.input_ids for e in dm.val_examples]
    no_val = setup_prompts(tmp_path, char_tokenizer, rows)
    assert no_val.sample_prompts(2) == [e.input_ids for e in no_val.train_examples[:2]]


def test_builtin_prompts_are_valid_and_match_their_generator(tiny_llama, tmp_path):
    from rlhf_lightning.data import synthetic
    from rlhf_lightning.models import load_tokenizer

    dm = PromptsDataModule()
    dm.tokenizer = load_tokenizer(tiny_llama)
    dm.setup("fit")
    assert dm.stats["rows"] == 208 and len(dm.train_examples) > 180 and len(dm.val_examples) > 0
    texts = [e.text for e in dm.train_examples + dm.val_examples]
    assert len(set(texts)) == len(texts)  # no prompt repeats, so evaluation prompts are unseen in training
    assert all(e.text.endswith("<|im_start|>assistant\n") for e in dm.train_examples)
    synthetic.write_assets(tmp_path)
    shipped = [row for _, row in read_rows("builtin:prompts.jsonl")]
    assert shipped == [row for _, row in read_rows(str(tmp_path / "prompts.jsonl"))]
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 16 and batch["attention_mask"][:, -1].all()


def test_held_out_rows_do_not_depend_on_the_length_policy(tmp_path, char_tokenizer):
    # every third prompt is over max_length: dropping them must not move any other row across the split
    rows = [{"prompt": f"p{i}" + ("-long-long-long" if i % 3 == 0 else "")} for i in range(30)]
    common = dict(val_fraction=0.3, split_seed=1, max_length=8, chat_template="never")
    dropped = setup_prompts(tmp_path, char_tokenizer, rows, overlong="drop", **common)
    truncated = setup_prompts(tmp_path, char_tokenizer, rows, overlong="truncate", **common)

    def origins(examples):
        return [e.row["origin"]["row"] for e in examples]

    assert origins(truncated.val_examples) and dropped.stats["dropped overlong"] == 10
    assert origins(dropped.val_examples) == [r for r in origins(truncated.val_examples) if (r - 1) % 3 != 0]
    assert origins(dropped.train_examples) == [r for r in origins(truncated.train_examples) if (r - 1) % 3 != 0]
    cut = [e for e in truncated.train_examples + truncated.val_examples if e.row["origin"]["row"] == 1]
    assert cut[0].display == "…ong-long" and len(cut[0].input_ids) == 8  # what the model saw, marked as cut


def test_a_held_out_split_emptied_by_overlong_rows_names_the_length_fix(tmp_path, char_tokenizer):
    rows = [{"prompt": "short"}] * 3 + [{"prompt": "a much longer prompt"}]
    with pytest.raises(ValueError) as info:  # split_seed 1 holds out row 4, the long one
        setup_prompts(
            tmp_path, char_tokenizer, rows, val_fraction=0.25, max_length=10, split_seed=1, chat_template="never"
        )
    assert "leaving 3 usable rows to train on and 0 to validate on" in str(info.value)
    assert "raise max_length (10) or set overlong: truncate to keep the 1 overlong rows" in str(info.value)


def test_written_held_out_prompts_read_back_as_the_same_prompts(tmp_path, char_tokenizer):
    conversation = [*USER, *ANSWER, {"role": "user", "content": "And the tea?"}, *ANSWER]
    rows = [{"prompt": f"text {i}", "score": i} for i in range(6)] + [{"messages": conversation}] * 4
    rows += [{"prompt": USER, "chosen": "x", "rejected": "y"}] * 4
    dm = setup_prompts(tmp_path, char_tokenizer, rows, val_fraction=0.5, split_seed=1)
    count = dm.write_heldout(tmp_path / "heldout.jsonl")  # 4 of the 7 prompts: the 8 rows asking USER and 3 texts
    assert count == len(dm.val_examples) == 11 and dm.stats["val prompts"] == 4
    again = PromptsDataModule(train_files=str(tmp_path / "heldout.jsonl"), val_fraction=0.0)
    again.tokenizer = char_tokenizer
    again.setup("fit")
    assert [e.input_ids for e in again.train_examples] == [e.input_ids for e in dm.val_examples]
    assert [e.display for e in again.train_examples] == [e.display for e in dm.val_examples]
    shown = {"And the tea?", USER[0]["content"]} | {f"text {i}" for i in range(6)}  # the last request of each
    assert {e.display for e in dm.val_examples} <= shown
