"""Degenerate answers for the reward stage's check, and the sequences they are scored as."""

from rlhf_lightning.data import ComparisonsDataModule
from rlhf_lightning.data.degenerate import degenerate_answers
from tests.helpers import write_jsonl

PROMPT = "How do I keep basil alive on a windowsill?"
ANSWER = "Water it when the soil is dry, and turn the pot every few days."


def test_each_kind_of_degenerate_answer_by_hand():
    answers = degenerate_answers(PROMPT, ANSWER)
    assert answers == {
        "empty": "",
        "cut_mid_sentence": "Water it when the soil is dry",  # 7 of 14 words, "dry," without its comma
        "prompt_repeated": PROMPT,
        "phrase_repeated": " ".join(["Water it when"] * 4),  # 14 words // 3 = 4 times
    }
    messages = degenerate_answers([{"role": "user", "content": PROMPT}], [{"role": "assistant", "content": "Yes."}])
    assert messages["prompt_repeated"] == PROMPT and messages["cut_mid_sentence"] == "Yes"
    assert messages["phrase_repeated"] == "Yes. Yes. Yes."  # at least three times


def comparisons(tmp_path, tokenizer, rows, **kwargs):
    dm = ComparisonsDataModule(train_files=write_jsonl(tmp_path / "c.jsonl", rows), val_fraction=0.0, **kwargs)
    dm.tokenizer = tokenizer
    dm.setup("fit")
    return dm


def test_another_answer_is_formatted_as_the_rows_and_an_empty_one_as_a_policys_empty_turn(tmp_path, char_tokenizer):
    tok = char_tokenizer
    text_row = {"prompt": PROMPT, "chosen": ANSWER, "rejected": "No idea."}
    user = [{"role": "user", "content": PROMPT}]
    generation_prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    for chat_template in ("auto", "never"):
        dm = comparisons(tmp_path, tok, [text_row], chat_template=chat_template)
        example = dm.train_examples[0]
        assert dm.answer_sequence(example, ANSWER) == example.sequences[0]  # the chosen answer, as the row gave it
        empty = tok.decode(dm.answer_sequence(example, ""))
        if chat_template == "auto":  # the prompt with the generation prompt, then the end-of-turn token
            assert empty == generation_prompt + "<|im_end|>"
        else:
            assert empty == PROMPT + tok.eos_token
    message_row = {"prompt": user, "chosen": [{"role": "assistant", "content": ANSWER}], "rejected": "No."}
    message_row["rejected"] = [{"role": "assistant", "content": "No."}]
    dm = comparisons(tmp_path, tok, [message_row], chat_template="never")  # message rows use the template anyway
    example = dm.train_examples[0]
    assert dm.answer_sequence(example, ANSWER) == example.sequences[0]
    assert tok.decode(dm.answer_sequence(example, "")) == generation_prompt + "<|im_end|>"
