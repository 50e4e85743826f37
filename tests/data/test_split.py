"""The held-out split is by prompt: every row answering one prompt (several annotators and a judge on one
item, the pairs of one prompt, a repeated prompt) lands on the same side, in every DataModule."""

import json
import random

import pytest

from rlhf_lightning.data import ComparisonsDataModule, DemonstrationsDataModule, PromptsDataModule
from rlhf_lightning.data.labels import LabelStore
from rlhf_lightning.data.split import prompt_group, split_groups
from tests.helpers import write_jsonl

USER = [{"role": "user", "content": "Review a film."}]
SYSTEM = [{"role": "system", "content": "Be brief."}]
ANSWER = [{"role": "assistant", "content": "Fine."}]


def key(prompt, tools=None):
    return json.dumps({"prompt": prompt, "tools": tools}, sort_keys=True)


def test_prompt_group_names_the_prompt_of_every_row_format():
    assert prompt_group({"prompt": " Review a film.\n", "chosen": "a", "rejected": "b"}) == key("Review a film.")
    assert prompt_group({"prompt": "Review a film.", "completion": "x"}) == key("Review a film.")
    # a conversation is grouped by what comes before its first answer, a prompt list by itself
    assert prompt_group({"messages": USER + ANSWER + USER + ANSWER}) == key("Review a film.")
    assert prompt_group({"prompt": USER, "responses": ["a", "b"]}) == key("Review a film.")  # = the text prompt
    assert prompt_group({"prompt": SYSTEM + USER}) == key(SYSTEM + USER) != key("Review a film.")
    # implicit prompts: what chosen and rejected share at the start
    assert prompt_group({"chosen": USER + ANSWER, "rejected": USER + [{"role": "assistant", "content": "No."}]}) == (
        key("Review a film.")
    )
    assert prompt_group({"chosen": "Q: hi A: yes", "rejected": "Q: hi A: no"}) == key("Q: hi A:")
    assert prompt_group({"text": "Once upon a time"}) == key("Once upon a time")
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert prompt_group({"prompt": "x", "tools": tools}) == key("x", tools) != prompt_group({"prompt": "x"})
    assert prompt_group({"other": 1}) == json.dumps({"other": 1}) != prompt_group({"other": 2})


def test_split_groups_holds_out_whole_groups_and_matches_a_row_shuffle_when_every_row_is_its_own():
    groups = ["a", "a", "b", "c", "c", "c", "d", "e"]  # 5 prompts: 0.4 of them is 2
    held = split_groups(groups, 0.4, seed=3)
    order = list(range(5))
    random.Random(3).shuffle(order)
    assert held == {"abcde"[i] for i in order[:2]}
    assert split_groups(groups, 0.01, seed=3) == {"abcde"[order[0]]}  # at least one prompt
    unique = [str(i) for i in range(20)]
    rows = list(range(20))
    random.Random(7).shuffle(rows)
    assert split_groups(unique, 0.25, seed=7) == {str(i) for i in rows[:5]}


def _sides(dm, prompt_of):
    return [{prompt_of(e) for e in examples} for examples in (dm.train_examples, dm.val_examples)]


def test_a_label_database_with_two_annotators_and_a_judge_per_item_holds_out_whole_items(tmp_path, char_tokenizer):
    store = LabelStore(tmp_path / "labels.sqlite", create=True)
    prompts = [f"Review film {i}." for i in range(10)]
    store.add_candidates("r", 1, "sft", {}, [(p, None, p, [f"Great {i}.", f"Bad {i}.", f"Fine {i}."])
                                             for i, p in enumerate(prompts)])  # fmt: skip
    store.annotators_per_item = 2
    for annotator in ("ann", "bea"):
        while (item := store.next_item(annotator)) is not None:
            store.submit(item.id, annotator, item.version, [[k] for k in item.keys])
    for item_id in store.unjudged_items("judge:rule"):
        item = store.item(item_id, "judge:rule")
        store.submit(item_id, "judge:rule", None, [[k] for k in reversed(item.keys)], source="judge")
    dm = ComparisonsDataModule(
        train_files=str(store.path), val_fraction=0.3, chat_template="never", label_sources=["human", "judge"]
    )
    dm.tokenizer = char_tokenizer
    dm.setup("fit")
    assert dm.stats["rows"] == 30 and (dm.stats["train prompts"], dm.stats["val prompts"]) == (7, 3)
    train, val = _sides(dm, lambda e: e.prompt)
    assert not train & val and len(val) == 3
    assert len(dm.val_examples) == 9, "each held-out item brings its three rankings (two people, one judge)"


def _repeating_rows(kind: str) -> list[dict]:
    """Three rows per prompt, interleaved as files often are."""
    rows = []
    for answer in range(3):
        for p in range(12):
            prompt = f"Question {p}?"
            if kind == "comparisons":
                rows.append({"prompt": prompt, "chosen": f"good {answer}", "rejected": f"bad {answer}"})
            elif kind == "demonstrations":
                turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"a{answer}"}]
                rows.append({"messages": turns})
            else:
                rows.append({"prompt": prompt})
    return rows


@pytest.mark.parametrize(
    "module, prompt_of",
    [
        (ComparisonsDataModule, lambda e: e.prompt),
        (DemonstrationsDataModule, lambda e: tuple(e.input_ids[: e.prompt_length])),
        (PromptsDataModule, lambda e: e.text),
    ],
    ids=["comparisons", "demonstrations", "prompts"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_file_with_three_rows_per_prompt_never_puts_a_prompt_on_both_sides(
    tmp_path, char_tokenizer, module, prompt_of, seed
):
    kind = module.kind if hasattr(module, "kind") else module.__name__
    path = write_jsonl(tmp_path / "rows.jsonl", _repeating_rows(kind))
    dm = module(train_files=path, val_fraction=0.25, split_seed=seed)
    dm.tokenizer = char_tokenizer
    dm.setup("fit")
    train, val = _sides(dm, prompt_of)
    assert not train & val
    assert (len(train), len(val)) == (9, 3) == (dm.stats["train prompts"], dm.stats["val prompts"])
    assert (len(dm.train_examples), len(dm.val_examples)) == (27, 9)


def test_validation_files_that_repeat_training_prompts_are_warned_about(tmp_path, char_tokenizer):
    rows = _repeating_rows("comparisons")  # 12 prompts, three pairs each
    train = write_jsonl(
        tmp_path / "train.jsonl", [r for r in rows if r["prompt"] not in ("Question 0?", "Question 1?")]
    )
    val = write_jsonl(tmp_path / "val.jsonl", rows[:4])  # questions 0-3 with their first pairs: 2 seen in training
    dm = ComparisonsDataModule(train_files=train, val_files=val)
    dm.tokenizer = char_tokenizer
    with pytest.warns(UserWarning, match=r"2 of the 4 prompts in val_files .* also appear in train_files"):
        dm.setup("fit")
    assert (dm.stats["train prompts"], dm.stats["val prompts"]) == (10, 4)


def test_prompts_held_out_elsewhere_are_left_out_of_training_and_validation(tmp_path, char_tokenizer):
    rows = _repeating_rows("comparisons")  # 12 prompts, three pairs each
    asked = [{"role": "user", "content": "Question 5?"}]
    heldout = write_jsonl(
        tmp_path / "heldout.jsonl", [{"prompt": "Question 3?", "origin": {"row": 4}}, {"prompt": asked}]
    )
    answer = [{"role": "assistant", "content": "x"}], [{"role": "assistant", "content": "y"}]
    messages = [{"prompt": asked, "chosen": answer[0], "rejected": answer[1]}]
    dm = ComparisonsDataModule(train_files=write_jsonl(tmp_path / "train.jsonl", rows),
                               val_files=write_jsonl(tmp_path / "val.jsonl", rows[:6] + messages),
                               exclude_prompts=heldout)  # fmt: skip
    dm.tokenizer = char_tokenizer
    dm.setup("fit")
    prompts = {str(e.prompt) for e in dm.train_examples + dm.val_examples}
    assert "Question 3?" not in prompts and not any("Question 5?" in p for p in prompts)
    # questions 3 and 5 (text or a lone user message alike): six training pairs and three validation rows
    assert dm.stats["dropped (prompt in exclude_prompts)"] == 6 + 3
    assert len(dm.train_examples) == 30 and len(dm.val_examples) == 4
