import json

import pytest

from rlhf_lightning.data import DataFormatError, DemonstrationsDataModule, read_rows
from rlhf_lightning.data.errors import OptionError
from rlhf_lightning.data.formats import TokenizedExample
from rlhf_lightning.data.loading import ResumableSampler, collate_right_padded

ROWS = [{"prompt": f"q{i}", "completion": f"answer {i}"} for i in range(10)]


def write_jsonl(path, rows, raw_lines=()):
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_file_type_reads_the_same_rows(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, ROWS)
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    elif suffix == ".csv":
        path.write_text("prompt,completion\n" + "".join(f"{r['prompt']},{r['completion']}\n" for r in ROWS))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert list(read_rows(str(path))) == list(enumerate(ROWS, start=1))


def test_malformed_jsonl_line_is_reported_with_its_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS[:2], raw_lines=['{"prompt": "q", "completion": '])
    with pytest.raises(DataFormatError, match=r"d\.jsonl, row 3: malformed JSON"):
        list(read_rows(path))


def test_unknown_file_type_and_missing_file(tmp_path):
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataFormatError, match="unsupported file type"):
        list(read_rows(str(tmp_path / "d.txt")))
    with pytest.raises(FileNotFoundError, match="no such file"):
        list(read_rows(str(tmp_path / "absent.jsonl")))


COLUMNS = {k: [r[k] for r in ROWS] for k in ("prompt", "completion")}
LAYOUTS = {
    "json list on one line, .jsonl": ("d.jsonl", json.dumps(ROWS)),
    "pretty json list, .jsonl": ("d.jsonl", json.dumps(ROWS, indent=2)),
    "json lines, .json": ("d.json", "\n".join(json.dumps(r) for r in ROWS)),
    "columns": ("d.json", json.dumps(COLUMNS)),
    "pretty columns, .jsonl": ("d.jsonl", json.dumps(COLUMNS, indent=1)),
    "one list under a key": ("d.json", json.dumps({"data": ROWS}, indent=2)),
    "one row as an object, .json": ("d.json", json.dumps(ROWS[0], indent=2)),
}  # fmt: skip


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_json_layout_the_datasets_library_reads_gives_the_same_rows(tmp_path, layout):
    name, text = LAYOUTS[layout]
    (tmp_path / name).write_text(text)
    expected = ROWS[:1] if "one row" in layout else ROWS
    assert list(read_rows(str(tmp_path / name))) == list(enumerate(expected, start=1))


def test_compressed_files_and_byte_order_marks_are_read(tmp_path):
    import gzip

    lines = "\n".join(json.dumps(r) for r in ROWS)
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + lines.encode())  # as Windows tools write UTF-8
    csv_text = "prompt,completion\n" + "".join(f"{r['prompt']},{r['completion']}\n" for r in ROWS)
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + csv_text.encode())
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS).encode())
    for name in ("d.jsonl.gz", "bom.jsonl", "bom.csv", "bom.json"):
        assert list(read_rows(str(tmp_path / name))) == list(enumerate(ROWS, start=1)), name


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("d.jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "x"}\n',
         r"d\.jsonl, row 2: the line is not UTF-8 text \(byte 0xE9 at column 16\)"),
        ("d.csv", b"prompt,completion\na,b\ncaf\xe9,x\n", r"d\.csv, row 2: line 3 is not UTF-8 text \(byte 0xE9"),
        ("d.json", b'[\n{"prompt": "caf\xe9"}\n]', r"d\.json: line 2 is not UTF-8 text"),
        ("d.json", b'{"prompt": ["a", "b"], "completion": ["c"]}', r"found column lists of different lengths"),
        ("d.json", b'"just text"', r"expected JSON lines .*; found a string"),
        ("d.json", b'[\n {"a": 1},\n {bad}\n]', r"malformed JSON at line 3, column 3 .*; expected JSON lines"),
        ("d.csv", b"prompt,completion\na,b,c\n", r"d\.csv, row 1: has 3 cells but the header names 2 fields"),
        ("d.csv", b"", r"expected a header row"),
        ("d.parquet", b'{"prompt": "a"}', r"expected a Parquet file; found a file starting with"),
        ("d.txt", b"x", r"unsupported file type"),
        ("d.jsonl.gz", b'{"prompt": "a"}', r"d\.jsonl\.gz: expected a \.gz compressed file"),
        ("d.jsonl", b'{"margin": ' + b"9" * 5000 + b"}", r"d\.jsonl, row 1: unreadable JSON"),
    ],
)  # fmt: skip
def test_unreadable_files_say_what_was_expected_and_found(tmp_path, name, content, expected):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataFormatError, match=expected):
        list(read_rows(str(tmp_path / name)))


@pytest.mark.parametrize(("rows", "fraction"), [(1, 0.1), (3, 0.9)])
def test_val_fraction_leaving_nothing_to_train_names_the_option_counts_and_fix(tmp_path, tiny_llama, rows, fraction):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS[:rows])
    with pytest.raises(ValueError) as info:
        _datamodule(path, tiny_llama, val_fraction=fraction)
    message = str(info.value)
    assert f"val_fraction {fraction} holds out {rows} of the {rows} prompts of the {rows} rows" in message
    assert "leaving 0 usable rows to train on" in message
    assert "val_fraction: 0" in message and "val_files" in message


def test_files_without_usable_rows_are_named(tmp_path, tiny_llama):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"no usable rows in train_files .*empty\.jsonl"):
        _datamodule(str(empty), tiny_llama)
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(ValueError, match=r"no usable rows in val_files .*empty\.jsonl"):
        _datamodule(path, tiny_llama, val_files=str(empty))


def test_rows_all_dropped_as_overlong_are_one_line_naming_max_length_the_longest_row_and_the_fixes(
    tmp_path, tiny_llama
):
    rows = [{"prompt": "Say hi. ", "completion": "hello there " * n} for n in (2, 9, 4)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    longest = len(_datamodule(path, tiny_llama, val_fraction=0.0).train_examples[1].input_ids)
    with pytest.raises(OptionError) as info:
        _datamodule(path, tiny_llama, max_length=4, overlong="drop")
    message = str(info.value)
    assert message.startswith(f"demonstrations: no usable rows in train_files ['{path}'] (rows 3, dropped overlong 3)")
    assert f"3 longer than max_length 4 (the longest, {path}, row 2, has {longest} tokens)" in message
    assert f"raise max_length to {longest}, or set overlong: truncate" in message and "\n" not in message
    # the validation files' own counts, not the training files'
    short = write_jsonl(tmp_path / "short.jsonl", [{"prompt": "a", "completion": "b"}])
    fits = len(_datamodule(short, tiny_llama, val_fraction=0.0).train_examples[0].input_ids)
    with pytest.raises(OptionError, match=r"no usable rows in val_files .* \(rows 3, dropped overlong 3\)"):
        _datamodule(short, tiny_llama, max_length=fits, overlong="drop", val_files=path)


def _datamodule(path, tiny_llama, **kwargs):
    dm = DemonstrationsDataModule(train_files=path, tokenizer=tiny_llama, **kwargs)
    dm.setup("fit")
    return dm


def test_bad_row_stops_setup_before_training_with_file_row_field(tmp_path, tiny_llama):
    rows = ROWS[:4] + [{"prompt": "q", "completion": ""}] + ROWS[4:]
    path = write_jsonl(tmp_path / "demos.jsonl", rows)
    with pytest.raises(DataFormatError, match=r"demos\.jsonl, row 5, field 'completion': is empty"):
        _datamodule(path, tiny_llama)


def test_held_out_split_is_seeded_and_disjoint(tmp_path, tiny_llama):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    a = _datamodule(path, tiny_llama, val_fraction=0.2, split_seed=3)
    b = _datamodule(path, tiny_llama, val_fraction=0.2, split_seed=3)
    c = _datamodule(path, tiny_llama, val_fraction=0.2, split_seed=4)
    assert len(a.val_examples) == 2 and len(a.train_examples) == 8
    assert a.val_examples == b.val_examples
    assert a.val_examples != c.val_examples
    assert not {tuple(e.input_ids) for e in a.val_examples} & {tuple(e.input_ids) for e in a.train_examples}


def test_overlong_rows_are_truncated_or_dropped_and_counted(tmp_path, tiny_llama):
    rows = [
        {"prompt": "q", "completion": "short"},
        {"prompt": "q", "completion": "x" * 50},
        {"prompt": "p" * 30, "completion": "y"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cut = _datamodule(path, tiny_llama, max_length=20, val_fraction=0.0, chat_template="never")
    assert cut.stats["truncated"] == 1 and cut.stats["dropped no target after truncation"] == 1
    assert [len(e.input_ids) for e in cut.train_examples] == [7, 20]
    dropped = _datamodule(path, tiny_llama, max_length=20, val_fraction=0.0, overlong="drop", chat_template="never")
    assert dropped.stats["dropped overlong"] == 2 and len(dropped.train_examples) == 1


def test_collate_builds_masks_from_lengths_even_when_pad_equals_eos():
    eos = 2
    batch = collate_right_padded(
        [TokenizedExample([5, 6, eos], [False, True, True], 1), TokenizedExample([7, eos], [False, True], 1)],
        pad_id=eos,
    )
    assert batch["input_ids"].tolist() == [[5, 6, eos], [7, eos, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]  # the real EOS of row 2 stays visible
    assert batch["loss_mask"].tolist() == [[False, True, True], [False, True, False]]


def test_resumable_sampler_continues_the_same_permutation():
    data = list(range(20))
    full = ResumableSampler(data, seed=5)
    full.set_epoch(2)
    order = list(full)
    resumed = ResumableSampler(data, seed=5)
    resumed.set_epoch(2)
    resumed.skip_next_epoch_start(8)
    assert list(resumed) == order[8:]
    assert list(resumed) == order  # the skip applies once
    assert sorted(order) == data and order != data


def test_builtin_demonstrations_are_valid_and_match_their_generator(tiny_llama, tmp_path):
    from rlhf_lightning.data import synthetic

    dm = _datamodule("builtin:demonstrations.jsonl", tiny_llama)
    assert dm.stats["rows"] == 400 and (dm.stats["train prompts"], dm.stats["val prompts"]) == (99, 5)
    synthetic.write_assets(tmp_path)
    shipped = [row for _, row in read_rows("builtin:demonstrations.jsonl")]
    assert shipped == [row for _, row in read_rows(str(tmp_path / "demonstrations.jsonl"))]
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8 and batch["loss_mask"].any(1).all()


def test_text_prompts_give_samples_and_text_rows_none(tmp_path, tiny_llama):
    rows = [{"text": "Once upon a time."}, {"prompt": "q0", "completion": "a"}, {"text": "More."}]
    raw = dict(val_fraction=0.0, chat_template="never")
    dm = _datamodule(write_jsonl(tmp_path / "d.jsonl", rows), tiny_llama, **raw)
    assert [len(p) for p in dm.sample_prompts(4)] == [2]  # the text rows have no prompt to answer
    every_token = _datamodule(
        write_jsonl(tmp_path / "e.jsonl", ROWS[:3]), tiny_llama, completion_only_loss=False, **raw
    )
    assert all(e.loss_mask == [True] * len(e.input_ids) for e in every_token.train_examples)
    assert [len(p) for p in every_token.sample_prompts(4)] == [2, 2, 2]  # "q0".."q2", whatever is trained


def test_hand_rendered_chat_text_is_counted_and_warned_about(tmp_path, tiny_llama):
    rows = [{"prompt": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "completion": "Hello"}] * 2
    with pytest.warns(UserWarning, match=r"2 text row\(s\) spell the tokenizer's control tokens"):
        dm = _datamodule(write_jsonl(tmp_path / "d.jsonl", rows + ROWS), tiny_llama, val_fraction=0.0)
    assert dm.stats["text rows spelling control tokens (trained as text)"] == 2


def test_a_shipped_tasks_file_or_function_with_other_training_data_is_named():
    from rlhf_lightning.data.readers import shipped_default_warning

    def warned(value: str, train_files: list[str]) -> bool:
        return shipped_default_warning("opt", value, train_files, "why") is not None

    assert warned("builtin:demonstrations.jsonl", ["mine.jsonl"])  # the user's own comparisons
    assert warned("rlhf_lightning.data.synthetic:gold_reward", ["builtin:everyday_prompts.jsonl"])  # another task
    assert warned("builtin:demonstrations.jsonl", ["builtin:comparisons.jsonl", "mine.jsonl"])  # mixed
    assert not warned("builtin:demonstrations.jsonl", ["builtin:comparisons.jsonl"])  # the quickstart
    assert not warned("builtin:everyday_demonstrations.jsonl", ["builtin:everyday_comparisons.jsonl"])
    assert not warned("rlhf_lightning.tasks.everyday:gold_reward", ["builtin:everyday_prompts.jsonl"])
    # one development task's calibration file or gold rule with another's data
    assert warned("builtin:everyday_demonstrations.jsonl", ["builtin:lists_comparisons.jsonl"])
    assert warned("rlhf_lightning.tasks.tone:gold_reward", ["builtin:lengths_prompts.jsonl"])
    assert not warned("rlhf_lightning.tasks.tone:gold_reward", ["builtin:tone_prompts.jsonl"])
    assert not warned("mine.jsonl", ["builtin:comparisons.jsonl"])  # the user's own file is theirs to choose
    assert not warned("builtin:demonstrations.jsonl", ["runs/labels.sqlite"])  # no record of its prompts' task
    message = shipped_default_warning("opt", "builtin:prompts.jsonl", ["a.jsonl"], "why")
    assert message == (
        "opt: builtin:prompts.jsonl is the quickstart's, shipped with the package, while train_files ['a.jsonl'] "
        "are not: why. Give your own, or leave opt out"
    )
