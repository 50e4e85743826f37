"""Degenerate answers for the reward stage's check, and the sequences they are scored as."""

import pytest

from rlhf_lightning.data import ComparisonsDataModule
from rlhf_lightning.data.degenerate import DEGENERATE_KINDS, degenerate_answers, exploit_message, exploitable
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


def test_rejected_variants_are_added_to_training_prompts_as_worse_than_the_best_answer(tmp_path, char_tokenizer):
    tok = char_tokenizer
    rows = [
        {"prompt": PROMPT, "chosen": ANSWER, "rejected": "No idea."},
        {"prompt": "Name a cat.", "responses": ["Mochi", "Grey Cloud the cat", "cat"], "ranking": [2, 1, 3]},
        {"chosen": "A whole text.", "rejected": "Another one."},  # implicit prompt: nothing to answer
        {"prompt": "Say hi.", "chosen": "Say hi.", "rejected": "No."},  # the prompt repeated IS the chosen answer
    ]
    plain = comparisons(tmp_path, tok, rows)
    dm = comparisons(tmp_path, tok, rows, rejected_variants=["empty", "prompt_repeated"])
    pair, ranking, implicit, echo = dm.train_examples
    # the pair: chosen (0) beats rejected (1), the empty turn (2) and the request repeated back (3)
    assert pair.pairs == [(0, 1), (0, 2), (0, 3)]
    assert pair.sequences[:2] == plain.train_examples[0].sequences and pair.responses == [ANSWER, "No idea."]
    assert pair.sequences[2] == dm.answer_sequence(pair, "")
    assert pair.sequences[3] == dm.answer_sequence(pair, PROMPT)
    # the ranking: its best response is rank 1, "Grey Cloud the cat" (index 1)
    assert ranking.pairs[-2:] == [(1, 3), (1, 4)] and len(ranking.sequences) == 5
    assert implicit == plain.train_examples[2]
    assert echo.pairs == [(0, 1), (0, 2)]  # the repeated prompt equals the chosen answer: only the empty turn added
    assert dm.stats["rejected variant empty added"] == 3 and dm.stats["rejected variant prompt_repeated added"] == 2
    assert dm.stats["rejected variant prompt_repeated skipped (identical to a response)"] == 1
    assert dm.stats["rejected variants skipped (row without a prompt)"] == 1


def test_rejected_variants_leave_validation_rows_as_given_and_refuse_unknown_kinds(tmp_path, char_tokenizer):
    rows = [{"prompt": f"Q{i}?", "chosen": f"Answer number {i}.", "rejected": "No."} for i in range(20)]
    dm = ComparisonsDataModule(
        train_files=write_jsonl(tmp_path / "c.jsonl", rows), val_fraction=0.5, rejected_variants=["empty"]
    )
    dm.tokenizer = char_tokenizer
    dm.setup("fit")
    assert all(e.pairs == [(0, 1), (0, 2)] for e in dm.train_examples)
    assert all(e.pairs == [(0, 1)] and len(e.sequences) == 2 for e in dm.val_examples)
    dm.setup("validate")  # a second setup (Lightning calls it per stage) adds nothing more
    assert all(len(e.sequences) == 3 for e in dm.train_examples)
    with pytest.raises(ValueError, match=r"data.rejected_variants: unknown \['blank'\]"):
        ComparisonsDataModule(rejected_variants=["blank"])


def test_a_reward_model_is_flagged_when_empty_or_echoed_answers_beat_the_median_on_most_prompts():

    def report(**shares):
        kinds = {k: {"above_median_real": shares.get(k, 0.0)} for k in DEGENERATE_KINDS}
        return {"prompts": 20, "split": "held-out", "kinds": kinds}

    assert exploitable(report(empty=0.5, prompt_repeated=0.5, phrase_repeated=1.0)) == {}  # half is not most
    flagged = exploitable(report(empty=0.55, prompt_repeated=0.9))
    assert flagged == {"empty": 0.55, "prompt_repeated": 0.9}
    message = exploit_message(report(empty=0.55, prompt_repeated=0.9), flagged, "runs/r/final")
    assert "runs/r/final scores a degenerate answer above the median real answer on most of the 20 held-out" in message
    assert "(empty answer 55%, prompt repeated answer 90%)" in message
    assert 'rejected_variants: ["empty", "prompt_repeated"]' in message
