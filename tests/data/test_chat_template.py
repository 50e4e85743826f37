"""Standard text rows on a chat model: ``chat_template: auto`` (the default) gives every stage the sequence
the same row written as messages gives; ``never`` joins the texts raw, as TRL does."""

import pytest

from rlhf_lightning.data import ComparisonsDataModule, DemonstrationsDataModule, PromptsDataModule
from rlhf_lightning.data.errors import OptionError, RowLocation
from rlhf_lightning.data.formats import scored_sequence
from rlhf_lightning.models.tiny import build_char_tokenizer
from tests.helpers import write_jsonl

PROMPT, ANSWER, WORSE = "Review the Blue Kettle.", "Lovely coffee.", "Meh."


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


def load(cls, tmp_path, tokenizer, rows, **kwargs):
    dm = cls(train_files=write_jsonl(tmp_path / f"{cls.kind}.jsonl", rows), val_fraction=0.0, **kwargs)
    dm.tokenizer = tokenizer
    dm.setup("fit")
    return dm.train_examples


@pytest.mark.parametrize(
    ("cls", "text_row", "message_row"),
    [
        (
            DemonstrationsDataModule,
            {"prompt": PROMPT, "completion": ANSWER},
            {"prompt": user(PROMPT), "completion": assistant(ANSWER)},
        ),
        (
            ComparisonsDataModule,
            {"prompt": PROMPT, "chosen": ANSWER, "rejected": WORSE},
            {"prompt": user(PROMPT), "chosen": assistant(ANSWER), "rejected": assistant(WORSE)},
        ),
        (
            ComparisonsDataModule,
            {"prompt": PROMPT, "responses": [WORSE, ANSWER], "ranking": [2, 1]},
            {"prompt": user(PROMPT), "responses": [assistant(WORSE), assistant(ANSWER)], "ranking": [2, 1]},
        ),
        (PromptsDataModule, {"prompt": PROMPT}, {"prompt": user(PROMPT)}),
    ],
    ids=["sft", "reward-pair", "reward-ranking", "ppo-prompt"],
)
def test_a_text_row_is_the_same_sequence_as_its_conversational_form(
    tmp_path, char_tokenizer, cls, text_row, message_row
):
    (chat,) = load(cls, tmp_path, char_tokenizer, [text_row])
    (messages,) = load(cls, tmp_path, char_tokenizer, [message_row])
    assert chat[:2] == messages[:2]  # token ids and loss mask / pairs (prompts: ids and rendered text)
    (raw,) = load(cls, tmp_path, char_tokenizer, [text_row], chat_template="never")
    assert raw[0] != chat[0]
    first = raw[0][0] if cls is ComparisonsDataModule else raw[0]
    # never: the raw texts, as TRL joins them: "Review the Blue Kettle.Lovely coffee." (plus EOS)
    assert char_tokenizer.decode(first, skip_special_tokens=True).startswith(PROMPT)
    assert "<|im_start|>" not in char_tokenizer.decode(first)


def test_scored_rows_and_rows_without_a_boundary(tmp_path, char_tokenizer):
    where = RowLocation("rows.jsonl", 1)
    text = scored_sequence({"prompt": PROMPT, "response": ANSWER}, char_tokenizer, where, chat=True)
    messages = scored_sequence({"messages": user(PROMPT) + assistant(ANSWER)}, char_tokenizer, where)
    assert text == messages
    # language-modeling text and implicit-prompt pairs have no prompt/response boundary: raw in every mode
    (lm,) = load(DemonstrationsDataModule, tmp_path, char_tokenizer, [{"text": PROMPT + ANSWER}])
    assert "<|im_start|>" not in char_tokenizer.decode(lm.input_ids)
    (pair,) = load(ComparisonsDataModule, tmp_path, char_tokenizer, [{"chosen": "Good day.", "rejected": "Bad."}])
    assert all("<|im_start|>" not in char_tokenizer.decode(s) for s in pair.sequences)


def test_an_empty_text_prompt_leaves_only_the_assistant_turn(tmp_path, char_tokenizer):
    (chat,) = load(DemonstrationsDataModule, tmp_path, char_tokenizer, [{"prompt": "", "completion": ANSWER}])
    (messages,) = load(DemonstrationsDataModule, tmp_path, char_tokenizer, [{"messages": assistant(ANSWER)}])
    assert chat.input_ids == messages.input_ids and chat.loss_mask == messages.loss_mask


def test_always_needs_a_template_and_unknown_modes_are_refused(tmp_path):
    plain = build_char_tokenizer()
    plain.chat_template = None
    row = {"prompt": PROMPT, "completion": ANSWER}
    with pytest.raises(OptionError, match=r"data\.chat_template: 'always', but the tokenizer .* has no chat template"):
        load(DemonstrationsDataModule, tmp_path, plain, [row], chat_template="always")
    (auto,) = load(DemonstrationsDataModule, tmp_path, plain, [row])  # auto: raw text without a template
    (never,) = load(DemonstrationsDataModule, tmp_path, plain, [row], chat_template="never")
    assert auto == never
    with pytest.raises(OptionError, match=r"chat_template: expected one of auto, always, never, got 'yes'"):
        PromptsDataModule(chat_template="yes")


def test_the_choice_is_logged_once_per_datamodule(tmp_path, char_tokenizer, caplog):
    with caplog.at_level("INFO"):
        load(ComparisonsDataModule, tmp_path, char_tokenizer, [{"prompt": PROMPT, "chosen": ANSWER, "rejected": WORSE}])
    lines = [r.getMessage() for r in caplog.records if "chat_template" in r.getMessage()]
    assert len(lines) == 1 and "chat_template: auto, text rows formatted with the chat template" in lines[0]
