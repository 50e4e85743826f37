"""``rlhf-lightning generate``: K candidates per prompt into the labelling database, reproducible, resumable,
appending; the held-out prompts never labelled."""

import pytest

from rlhf_lightning.cli import main
from rlhf_lightning.commands.generate import generate_candidates
from rlhf_lightning.data.errors import OptionError
from rlhf_lightning.data.labels import LabelStore
from tests.helpers import write_jsonl

PROMPTS = [f"Prompt number {i}." for i in range(10)]


@pytest.fixture
def prompts(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])


def run(tiny_llama, prompts, database, **kwargs):
    options = dict(num_candidates=3, max_new_tokens=6, batch_size=2, chat_template="never", progress=False)
    return generate_candidates(policy=tiny_llama, prompts=prompts, database=str(database), **{**options, **kwargs})


def candidates(database):
    store = LabelStore(database)
    return {i: sorted(c.response for c in store.item(i, "x").candidates) for i in range(1, store.counts()["items"] + 1)}


def test_candidates_with_their_policy_and_settings(tiny_llama, prompts, tmp_path):
    counts = run(tiny_llama, prompts, tmp_path / "l.sqlite", max_prompts=5)
    assert counts.prompts == 5 and counts.new_items == 5
    assert counts.candidates + counts.duplicates + counts.empty == 15
    store = LabelStore(tmp_path / "l.sqlite")
    item = store.item(1, "x")
    assert item.prompt == PROMPTS[0] and item.round == 1
    assert all(c.policy == tiny_llama for c in item.candidates)
    settings = item.candidates[0].settings
    assert settings["temperature"] == 1.0 and settings["max_new_tokens"] == 6 and settings["num_candidates"] == 3


def test_the_same_options_give_the_same_candidates_and_a_rerun_adds_nothing(tiny_llama, prompts, tmp_path):
    run(tiny_llama, prompts, tmp_path / "a.sqlite", max_prompts=4, seed=3)
    run(tiny_llama, prompts, tmp_path / "b.sqlite", max_prompts=4, seed=3)
    assert candidates(tmp_path / "a.sqlite") == candidates(tmp_path / "b.sqlite")
    again = run(tiny_llama, prompts, tmp_path / "a.sqlite", max_prompts=4, seed=3)
    assert again.candidates == 0 and LabelStore(tmp_path / "a.sqlite").counts()["items"] == 4


def test_an_interrupted_run_continues_after_its_last_stored_chunk(tiny_llama, prompts, tmp_path, monkeypatch):
    run(tiny_llama, prompts, tmp_path / "whole.sqlite", max_prompts=6)
    original = LabelStore.add_candidates
    calls = []

    def crash_on_second_chunk(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LabelStore, "add_candidates", crash_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_llama, prompts, tmp_path / "cut.sqlite", max_prompts=6)
    assert LabelStore(tmp_path / "cut.sqlite").counts()["items"] == 2, "the first chunk (2 prompts) was stored"
    monkeypatch.setattr(LabelStore, "add_candidates", original)
    resumed = run(tiny_llama, prompts, tmp_path / "cut.sqlite", max_prompts=6)
    assert resumed.prompts == 4
    assert candidates(tmp_path / "cut.sqlite") == candidates(tmp_path / "whole.sqlite")


def test_more_prompts_or_another_batch_size_sample_only_the_new_prompts(tiny_llama, prompts, tmp_path):
    database = tmp_path / "l.sqlite"
    run(tiny_llama, prompts, database, max_prompts=3, batch_size=2)
    first = candidates(database)
    more = run(tiny_llama, prompts, database, max_prompts=6, batch_size=4)
    assert more.prompts == 3, "the first 3 prompts were stored by this run already"
    after = candidates(database)
    assert {i: after[i] for i in first} == first and len(after) == 6
    assert run(tiny_llama, prompts, database, max_prompts=6).prompts == 0


def test_another_policy_or_seed_appends_to_the_open_items_and_new_prompts_add_items(tiny_llama, prompts, tmp_path):
    database = tmp_path / "l.sqlite"
    run(tiny_llama, prompts, database, max_prompts=2, seed=0)
    before = candidates(database)
    run(tiny_llama, prompts, database, max_prompts=2, seed=1)
    after = candidates(database)
    assert set(after) == {1, 2} and all(set(before[i]) <= set(after[i]) for i in after)
    assert sum(map(len, after.values())) > sum(map(len, before.values()))
    run(tiny_llama, prompts, database, first_prompt=2, max_prompts=2)
    store = LabelStore(database)
    assert [store.item(i, "x").prompt for i in (3, 4)] == PROMPTS[2:4]


def test_held_out_prompts_are_never_labelled(tiny_llama, prompts, tmp_path):
    from rlhf_lightning.commands.evaluate import load_prompts
    from rlhf_lightning.models.loading import load_tokenizer

    run(tiny_llama, prompts, tmp_path / "l.sqlite", val_fraction=0.3, split_seed=0)
    store = LabelStore(tmp_path / "l.sqlite")
    labelled = {store.item(i, "x").prompt for i in range(1, store.counts()["items"] + 1)}
    heldout = {e.display for e in load_prompts(load_tokenizer(tiny_llama), prompts, 0.3, 0, 256, None, "drop", "never")}
    assert len(heldout) == 3 and not labelled & heldout and len(labelled) == 7


def test_options_that_cannot_work_are_refused_before_loading(tiny_llama, prompts, tmp_path):
    with pytest.raises(OptionError, match="num_candidates"):
        run(tiny_llama, prompts, tmp_path / "l.sqlite", num_candidates=1)
    with pytest.raises(OptionError, match="temperature"):
        run(tiny_llama, prompts, tmp_path / "l.sqlite", temperature=0.0)
    with pytest.raises(OptionError, match="no prompts"):
        run(tiny_llama, prompts, tmp_path / "l.sqlite", first_prompt=50)


def test_the_command_line(tiny_llama, prompts, tmp_path, capsys):
    database = tmp_path / "cli.sqlite"
    options = ["--num_candidates=2", "--max_new_tokens=4", "--max_prompts=2", "--chat_template=never"]
    main(["generate", f"--policy={tiny_llama}", f"--prompts={prompts}", f"--database={database}", *options])
    assert LabelStore(database).counts()["items"] == 2


def test_a_policy_folder_that_does_not_exist_is_named(prompts, tmp_path):
    with pytest.raises(SystemExit, match="--policy runs/nothing/sft/final: no such folder"):
        main(
            [
                "generate",
                "--policy=runs/nothing/sft/final",
                f"--prompts={prompts}",
                f"--database={tmp_path / 'l.sqlite'}",
            ]
        )
    assert not (tmp_path / "l.sqlite").exists()


def test_the_shipped_prompts_are_said_to_be_the_quickstarts(tiny_llama, prompts, tmp_path, caplog):
    """generate and evaluate default to builtin:prompts.jsonl: the log says whose prompts they are."""
    from rlhf_lightning.commands.evaluate import load_prompts
    from rlhf_lightning.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama)
    with caplog.at_level("INFO", logger="rlhf_lightning.commands.evaluate"):
        load_prompts(tokenizer, "builtin:prompts.jsonl", 0.0, 0, 256, 2, chat_template="never")
        load_prompts(tokenizer, prompts, 0.0, 0, 256, 2, chat_template="never")
    said = [r.getMessage() for r in caplog.records if "shipped" in r.getMessage()]
    assert said == [
        "prompts: builtin:prompts.jsonl are the quickstart's prompts, shipped with the package (--prompts for your own)"
    ]


def test_a_cut_off_answer_is_stored_as_cut_off_and_the_page_says_so(tiny_llama, prompts, tmp_path, monkeypatch):
    import rlhf_lightning.commands.generate as generate

    real, returned = generate.sample_from_role, []

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        returned.append(out[3].tolist())  # ended (b,): whether each answer reached a stop token
        return out

    monkeypatch.setattr(generate, "sample_from_role", recording)
    run(tiny_llama, prompts, tmp_path / "l.sqlite", max_prompts=4, max_new_tokens=40, stop_tokens=["e"])
    flags = [e for batch in returned for e in batch]
    assert True in flags and False in flags, "the stop token ends some answers and the length limit cuts others"
    store = LabelStore(tmp_path / "l.sqlite")
    stored = [c for i in range(1, 5) for c in store.item(i, "x").candidates]
    assert all(c.ended is not None for c in stored)
    cut = [c for c in stored if not c.ended]
    assert cut and all(len(c.response) >= 30 for c in cut), "a cut answer ran to the 40-token limit"
    assert all("e" not in c.response[:-1] for c in stored if c.ended), "a finished answer stopped at its first 'e'"
    public = store.item(1, "x").public()
    assert [c["cut_off"] for c in public["candidates"]] == [not c.ended for c in store.item(1, "x").candidates]
