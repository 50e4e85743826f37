"""Comparison and ranking rows: token ids, pairs, drops and errors (one token per character)."""

import json

import pytest
import torch

from rlhf_lightning.data import ComparisonsDataModule, DataFormatError
from rlhf_lightning.data.comparisons import ComparisonExample, collate_comparisons
from rlhf_lightning.data.formats import RowLocation

WHERE = RowLocation("prefs.jsonl", 3)


@pytest.fixture
def dm(char_tokenizer):
    module = ComparisonsDataModule(train_files="unused.jsonl", max_length=64)
    module.tokenizer = char_tokenizer
    return module


def ids(tok, text):
    return [tok.convert_tokens_to_ids(c) for c in text]


def test_explicit_text_pair_is_prompt_plus_response_plus_eos(dm, char_tokenizer):
    tok = char_tokenizer
    ex = dm.tokenize_row({"prompt": "Q:", "chosen": "yes", "rejected": "no", "margin": 1.5}, WHERE)
    assert ex.sequences == [ids(tok, "Q:yes") + [tok.eos_token_id], ids(tok, "Q:no") + [tok.eos_token_id]]
    assert ex.pairs == [(0, 1)] and ex.margin == 1.5


def test_implicit_prompt_text_and_conversation(dm, char_tokenizer):
    tok = char_tokenizer
    ex = dm.tokenize_row({"chosen": "Q:yes", "rejected": "Q:no"}, WHERE)
    assert ex.sequences[0] == ids(tok, "Q:yes") + [tok.eos_token_id]
    conv = {
        "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
    }
    ex = dm.tokenize_row(conv, WHERE)
    assert [s[-1] for s in ex.sequences] == [tok.eos_token_id] * 2


def test_conversational_sequences_end_at_eos_not_at_the_template_newline(dm, char_tokenizer):
    tok = char_tokenizer
    row = {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    ex = dm.tokenize_row(row, WHERE)
    rendered = tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
    assert rendered.endswith("<|im_end|>\n")
    assert ex.sequences[0] == tok(rendered, add_special_tokens=False)["input_ids"][:-1]  # the "\n" is cut


def test_ranking_gives_every_ordered_pair_and_skips_ties(dm):
    row = {"prompt": "Q:", "responses": ["b", "a", "c", "d"], "ranking": [2, 1, 3, 3]}
    ex = dm.tokenize_row(row, WHERE)
    assert len(ex.sequences) == 4
    # a(1) > b(2) > c(3) = d(3): 5 strict pairs of the 6, the c/d tie skipped
    assert sorted(ex.pairs) == sorted([(1, 0), (1, 2), (1, 3), (0, 2), (0, 3)])
    assert dm.stats["ranking pairs skipped (tied ranks)"] == 1


def test_ranking_without_ranks_is_ordered_best_first(dm):
    ex = dm.tokenize_row({"prompt": "Q:", "responses": ["x", "y", "z"]}, WHERE)
    assert sorted(ex.pairs) == [(0, 1), (0, 2), (1, 2)]  # K(K-1)/2 = 3


def test_identical_pairs_are_dropped_and_counted(tmp_path, tiny_llama):
    rows = [
        {"prompt": "Q:", "chosen": "same", "rejected": "same"},
        {"prompt": "Q:", "responses": ["x", "x", "y"]},  # x/x identical: skipped, x>y twice kept
        {"prompt": "Q:", "responses": ["x", "y"], "ranking": [1, 1]},  # only a tie: dropped
        {"prompt": "Q:", "chosen": "a", "rejected": "b"},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    module = ComparisonsDataModule(train_files=str(path), tokenizer=tiny_llama, val_fraction=0.0)
    module.setup()
    assert module.stats["dropped identical chosen and rejected"] == 1
    assert module.stats["dropped ranking without a strict preference"] == 1
    assert module.stats["ranking pairs skipped (identical responses)"] == 1
    assert len(module.train_examples) == 2


def test_overlong_rows_are_dropped_by_default_or_truncated(tmp_path, tiny_llama):
    rows = [{"prompt": "Q:", "chosen": "a" * 40, "rejected": "b"}, {"prompt": "Q:", "chosen": "ok", "rejected": "no"}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = dict(tokenizer=tiny_llama, val_fraction=0.0, max_length=10, chat_template="never")
    dropped = ComparisonsDataModule(train_files=str(path), **raw)
    dropped.setup()
    assert dropped.stats["dropped overlong"] == 1 and len(dropped.train_examples) == 1
    cut = ComparisonsDataModule(train_files=str(path), overlong="truncate", **raw)
    cut.setup()
    assert cut.stats["truncated"] == 1 and max(len(s) for s in cut.train_examples[0].sequences) == 10


@pytest.mark.parametrize(
    ("row", "field", "problem"),
    [
        ({"prompt": "q", "chosen": "a"}, "rejected", "missing"),
        ({"prompt": "q", "chosen": 1, "rejected": "b"}, "chosen", "expected a string, got int"),
        ({"prompt": "q", "chosen": "a", "rejected": ""}, "rejected", "is empty"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}, "margin", "expected a number"),
        ({"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}, "chosen", "list of messages"),
        ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "a"}],
          "rejected": [{"role": "assistant", "content": "b"}]}, "chosen", "no assistant message"),
        ({"responses": ["a", "b"]}, "prompt", "a ranking needs the prompt"),
        ({"prompt": "q", "responses": ["a"]}, "responses", "at least 2"),
        ({"prompt": "q", "responses": ["a", 2]}, "responses[1]", "expected a string"),
        ({"prompt": "q", "responses": ["a", "b"], "ranking": [1]}, "ranking", "2 ranks"),
        ({"prompt": "q", "responses": ["a", "b"], "ranking": [1, "2"]}, "ranking[1]", "integer rank"),
        ({"prompt": "q", "responses": ["a", "b"], "ranking": [0, 1]}, "ranking[0]", "outside 1..2"),
        ({"prompt": "q", "responses": ["a", "b", "c"], "ranking": [1, 2, 4]}, "ranking[2]", "outside 1..3"),
        ({"prompt": "q", "responses": ["a", "b"], "ranking": [-1, 1]}, "ranking[0]", "outside 1..2"),
        ({"prompt": "q", "responses": ["a", "b"], "margin": 1}, "margin", "not to rankings"),
        ({"question": "q"}, None, "no recognised fields"),
        ("text", None, "expected an object"),
    ],
)  # fmt: skip
def test_bad_rows_name_file_row_and_field(dm, row, field, problem):
    with pytest.raises(DataFormatError) as info:
        dm.tokenize_row(row, WHERE)
    assert (info.value.source, info.value.row, info.value.field) == ("prefs.jsonl", 3, field)
    assert problem in str(info.value)


def test_collate_offsets_pairs_into_the_flat_batch():
    a = ComparisonExample([[1, 2], [3]], [(0, 1)], 0.5)
    b = ComparisonExample([[4], [5, 6, 7], [8]], [(1, 0), (1, 2), (0, 2)])
    batch = collate_comparisons([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 0], [3, 0, 0], [4, 0, 0], [5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].sum(1).tolist() == [2, 1, 1, 3, 1]
    assert batch["better"].tolist() == [0, 3, 3, 2] and batch["worse"].tolist() == [1, 2, 4, 4]
    assert batch["group"].tolist() == [0, 1, 1, 1]
    assert torch.equal(batch["margin"], torch.tensor([0.5, 0.0, 0.0, 0.0]))


def test_shipped_comparisons_are_valid_match_their_generator_and_the_gold_rule(tiny_llama, tmp_path):
    from rlhf_lightning.data import read_rows, synthetic

    module = ComparisonsDataModule(tokenizer=tiny_llama)
    module.setup()
    assert module.stats["rows"] == 600  # 104 prompts, about six pairs each: 10 prompts held out whole
    assert (module.stats["train prompts"], module.stats["val prompts"]) == (94, 10)
    train, val = ({str(e.prompt) for e in examples} for examples in (module.train_examples, module.val_examples))
    assert not train & val and len(module.val_examples) == 66
    synthetic.write_assets(tmp_path)
    shipped = [row for _, row in read_rows("builtin:comparisons.jsonl")]
    assert shipped == [row for _, row in read_rows(str(tmp_path / "comparisons.jsonl"))]
    for row in shipped:
        if "chosen" in row:
            assert synthetic.gold_score(row["chosen"][0]["content"]) > synthetic.gold_score(
                row["rejected"][0]["content"]
            )
        else:
            gold = [synthetic.gold_score(r[0]["content"]) for r in row["responses"]]
            best_first = sorted(range(3), key=lambda i: row["ranking"][i])
            assert gold[best_first[0]] > gold[best_first[1]] > gold[best_first[2]]


@pytest.mark.parametrize("margin", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_margins_in_a_file_are_refused_with_file_row_field(tmp_path, char_tokenizer, margin):
    path = tmp_path / "prefs.jsonl"  # Python's json reads NaN and Infinity; they must never reach the loss
    path.write_text(
        '{"prompt": "q", "chosen": "a", "rejected": "b", "margin": 1.0}\n'
        f'{{"prompt": "q", "chosen": "a", "rejected": "b", "margin": {margin}}}\n'
    )
    module = ComparisonsDataModule(train_files=str(path), val_fraction=0.0)
    module.tokenizer = char_tokenizer
    with pytest.raises(DataFormatError) as info:
        module.setup()
    assert (info.value.row, info.value.field) == (2, "margin") and "finite number" in str(info.value)


def test_csv_margins_are_numbers_written_as_text(tmp_path, char_tokenizer):
    path = tmp_path / "prefs.csv"
    path.write_text("prompt,chosen,rejected,margin\nq,a,b,0.5\nq,c,d,nan\n")
    module = ComparisonsDataModule(train_files=str(path), val_fraction=0.0)
    module.tokenizer = char_tokenizer
    with pytest.raises(DataFormatError, match=r"prefs\.csv, row 2, field 'margin': expected a finite number"):
        module.setup()
    path.write_text("prompt,chosen,rejected,margin\nq,a,b,0.5\nq,c,d,\n")  # an empty cell: no margin
    module.setup()
    assert [e.margin for e in module.train_examples] == [0.5, 0.0]


def test_ties_within_one_to_k_are_allowed(dm):
    ex = dm.tokenize_row({"prompt": "Q:", "responses": ["a", "b", "c"], "ranking": [1, 3, 3]}, WHERE)
    assert sorted(ex.pairs) == [(0, 1), (0, 2)]


def _ranking_module(tmp_path, tokenizer, rows, **kwargs):
    module = ComparisonsDataModule(train_files=write_rows(tmp_path, rows), val_fraction=0.0, chat_template="never",
                                   **kwargs)  # fmt: skip
    module.tokenizer = tokenizer
    module.setup("fit")
    return module


def write_rows(tmp_path, rows):
    path = tmp_path / "rankings.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cut_off_answers_are_left_out_by_default_or_kept_without_their_end(tmp_path, char_tokenizer):
    row = {"prompt": "Q:", "responses": ["good", "cut mid", "bad"], "ranking": [1, 2, 3], "ended": [True, False, None]}
    dropped = _ranking_module(tmp_path, char_tokenizer, [row])
    (example,) = dropped.train_examples
    assert example.responses == ["good", "bad"] and example.pairs == [(0, 1)]
    assert dropped.stats["cut-off responses left out"] == 1
    kept = _ranking_module(tmp_path, char_tokenizer, [row], cut_off="keep")
    (example,) = kept.train_examples
    eos = char_tokenizer.eos_token_id
    assert example.pairs == [(0, 1), (0, 2), (1, 2)]
    assert [s[-1] == eos for s in example.sequences] == [True, False, True], "a cut answer is not scored at an end"
    assert example.sequences[1] == ids(char_tokenizer, "Q:cut mid")  # prompt + answer, no EOS after it
    only_cut = {"prompt": "Q:", "responses": ["a", "b"], "ranking": [1, 2], "ended": [False, True]}
    with pytest.raises(ValueError, match=r"cut-off responses left out 1.* set data.cut_off: keep to train the 1 cut"):
        _ranking_module(tmp_path, char_tokenizer, [only_cut])
    stats = _ranking_module(tmp_path, char_tokenizer, [only_cut, row]).stats
    assert stats["dropped ranking without a strict preference among finished answers"] == 1
    assert stats["train examples"] == 1


@pytest.mark.parametrize(
    "ended, field, problem",
    [("yes", "ended", "expected a list of 2 values"), ([True], "ended", "expected a list of 2"),
     ([True, "no"], "ended[1]", "expected true, false or null, got str")],
)  # fmt: skip
def test_a_bad_ended_field_is_named(tmp_path, char_tokenizer, ended, field, problem):
    row = {"prompt": "Q:", "responses": ["a", "b"], "ended": ended}
    with pytest.raises(DataFormatError) as info:
        _ranking_module(tmp_path, char_tokenizer, [row])
    assert info.value.field == field and problem in str(info.value)
