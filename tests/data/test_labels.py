"""The labelling database: candidates stored once per item, items handed out and resumed, every judgement saved
in one transaction or refused with the right error, and the export the reward stage trains on."""

import sqlite3
import threading

import pytest

from rlhf_lightning.data.comparisons import ComparisonsDataModule
from rlhf_lightning.data.labels import (
    AlreadyJudged,
    InvalidRanking,
    LabelError,
    LabelStore,
    StaleItem,
    UnknownItem,
    export_rows,
)
from rlhf_lightning.data.readers import read_rows


def make_store(tmp_path, prompts=None, policy="sft", run="r1", round=1):
    store = LabelStore(tmp_path / "labels.sqlite", create=True)
    prompts = prompts or [("Review a film.", ["Great film.", "Bad film.", "Okay film.", "Great film."])]
    store.add_candidates(run, round, policy, {"temperature": 1.0}, [(p, None, p, r) for p, r in prompts])
    return store


def rank(store, annotator, order=None, **kwargs):
    """Rank the annotator's next item: ``order`` indexes its keys best first (default: as shown)."""
    item = store.next_item(annotator)
    keys = [item.keys[i] for i in (order or range(len(item.keys)))]
    return item, store.submit(item.id, annotator, item.version, [[k] for k in keys], **kwargs)


def test_candidates_are_stored_once_and_empty_ones_not_at_all(tmp_path):
    store = LabelStore(tmp_path / "l.sqlite", create=True)
    counts = store.add_candidates("r", 1, "sft", {}, [("P", None, "P", ["a", "a ", "b", "  ", "c"])])
    assert (counts.candidates, counts.duplicates, counts.empty, counts.new_items) == (3, 1, 1, 1)
    again = store.add_candidates("r", 1, "sft", {}, [("P", None, "P", ["x", "y"])])
    assert again.candidates == 0, "a chunk an earlier attempt stored is not stored twice"
    assert sorted(c.response for c in store.item(1, "ann").candidates) == ["a", "b", "c"]


def test_a_second_policy_joins_the_open_item_and_a_ranked_item_is_closed(tmp_path):
    store = make_store(tmp_path)
    store.add_candidates(
        "r2", 1, "ppo", {}, [("Review a film.", None, "Review a film.", ["Superb film.", "Bad film."])]
    )
    item = store.item(1, "ann")
    assert {c.policy for c in item.candidates} == {"sft", "ppo"} and len(item.candidates) == 4
    assert store.counts()["items"] == 1
    rank(store, "ann")
    store.add_candidates("r3", 1, "ppo", {}, [("Review a film.", None, "Review a film.", ["New one.", "Other."])])
    assert store.counts()["items"] == 2, "a ranked item never changes: new candidates start a new item"
    assert len(store.item(1, "ann").candidates) == 4


def test_items_are_blind_shuffled_per_annotator_and_stable_across_reloads(tmp_path):
    responses = [f"answer {i}" for i in range(8)]
    store = make_store(tmp_path, [("P", responses)])
    first = store.next_item("ann")
    public = first.public()
    assert set(public) == {"item", "round", "prompt", "conversation", "tools", "version", "candidates"}
    assert all(set(c) == {"key", "text", "cut_off"} for c in public["candidates"]), "no policy, id or settings"
    assert [c["key"] for c in public["candidates"]] == list("ABCDEFGH")
    again = store.next_item("ann")  # a reload: the annotator's open item, in the same order
    assert again.id == first.id and [c.response for c in again.candidates] == [c.response for c in first.candidates]
    orders = {tuple(c.response for c in store.item(first.id, name).candidates) for name in ("a", "b", "c", "d")}
    assert len(orders) > 1 and tuple(responses) not in orders | {tuple(c.response for c in first.candidates)}


def test_ties_are_saved_and_exported_with_equal_ranks(tmp_path):
    store = make_store(tmp_path)
    item = store.next_item("ann")
    a, b, c = item.keys
    saved = store.submit(item.id, "ann", item.version, [[b], [a, c]], comment="close call")
    assert saved["ranking"] == [[b], [a, c]] and saved["comment"] == "close call"
    (row,), report = export_rows(store)
    by_text = dict(zip(row["responses"], row["ranking"]))
    text = {k: cand.response for k, cand in zip(item.keys, item.candidates)}
    assert by_text == {text[b]: 1, text[a]: 2, text[c]: 2}
    assert row["prompt"] == "Review a film." and row["annotator"] == "ann" and row["source"] == "human"
    assert report["exported"] == 1


@pytest.mark.parametrize(
    "ranking, error",
    [
        ([["A"], ["B"]], "missing: ['C']"),
        ([["A"], ["A"], ["B"], ["C"]], "repeated: ['A']"),
        ([["A"], ["B"], ["C"], ["Z"]], "unknown candidate keys ['Z']"),
        ([["A"], [], ["B", "C"]], "non-empty groups"),
        ("ABC", "list of non-empty groups"),
    ],
)
def test_a_ranking_that_is_not_a_grouping_of_every_candidate_is_refused(tmp_path, ranking, error):
    store = make_store(tmp_path)
    item = store.next_item("ann")
    with pytest.raises(InvalidRanking, match=error.replace("[", r"\[").replace("]", r"\]")) as info:
        store.submit(item.id, "ann", item.version, ranking)
    assert info.value.status == 422
    assert store.counts()["judgements"] == 0


def test_unknown_stale_and_repeated_submissions_change_nothing(tmp_path):
    store = make_store(tmp_path)
    item = store.next_item("ann")
    with pytest.raises(UnknownItem) as info:
        store.submit(99, "ann", item.version, [["A"]])
    assert info.value.status == 404
    with pytest.raises(StaleItem) as info:
        store.submit(item.id, "ann", "0ld", [[k] for k in item.keys])
    assert info.value.status == 409
    first = store.submit(item.id, "ann", item.version, [[k] for k in item.keys])
    with pytest.raises(AlreadyJudged) as info:
        store.submit(item.id, "ann", item.version, [[k] for k in reversed(item.keys)])
    assert info.value.status == 409 and info.value.judgement == first
    (stored,) = store.judgements()
    assert stored["ranks"] == {c.id: i + 1 for i, c in enumerate(item.candidates)}, "the first ranking stands"
    assert store.item(item.id, "ann").public() == item.public()


def test_new_candidates_make_an_open_page_stale(tmp_path):
    store = make_store(tmp_path)
    shown = store.next_item("ann")
    store.add_candidates("r2", 1, "ppo", {}, [("Review a film.", None, "Review a film.", ["Brand new."])])
    with pytest.raises(StaleItem, match="reload"):
        store.submit(shown.id, "ann", shown.version, [[k] for k in shown.keys])
    fresh = store.next_item("ann")
    assert len(fresh.keys) == 4
    store.submit(fresh.id, "ann", fresh.version, [[k] for k in fresh.keys])


def test_each_item_is_asked_of_the_set_number_of_annotators(tmp_path):
    store = make_store(tmp_path, [("P1", ["a", "b"]), ("P2", ["c", "d"]), ("Single", ["only"])])
    store.annotators_per_item = 2
    assert store.next_item("ann").id == store.next_item("bob").id == 1, "both are asked the first item"
    assert store.next_item("carol").id == 2, "item 1 is held by two annotators already"
    rank(store, "ann")
    rank(store, "bob")
    assert store.next_item("ann").id == 2
    progress = store.progress("ann")
    assert progress["items"] == 2, "an item with one candidate cannot be ranked"
    assert progress["complete"] == 1 and progress["you"]["done"] == 1


def test_skip_is_recorded_and_the_next_item_follows(tmp_path):
    store = make_store(tmp_path, [("P1", ["a", "b"]), ("P2", ["c", "d"])])
    item = store.next_item("ann")
    saved = store.submit(item.id, "ann", item.version, None, skip=True, comment="unclear prompt")
    assert saved["skipped"] and store.next_item("ann").id == 2
    assert export_rows(store)[0] == [] and store.progress("ann")["you"]["skipped"] == 1


def test_annotator_names_are_checked_and_judge_names_reserved(tmp_path):
    store = make_store(tmp_path)
    for bad in ("", "   ", "x" * 201, "tab\there", "judge:sneaky"):
        with pytest.raises(LabelError):
            store.next_item(bad)


def test_a_saved_judgement_survives_reopening_and_concurrent_writers(tmp_path):
    prompts = [(f"P{i}", [f"a{i}", f"b{i}", f"c{i}"]) for i in range(6)]
    store = make_store(tmp_path, prompts)
    store.annotators_per_item = 8
    errors = []

    def annotate(name):
        try:
            other = LabelStore(store.path)  # its own handle, as another server thread or process would have
            while (item := other.next_item(name)) is not None:
                other.submit(item.id, name, item.version, [[k] for k in item.keys])
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=annotate, args=(f"ann{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    reopened = LabelStore(store.path)
    assert reopened.counts()["judgements"] == 48
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_export_reports_agreement_and_keeps_only_agreeing_items_when_asked(tmp_path):
    store = make_store(tmp_path, [("P1", ["a", "b", "c"]), ("P2", ["d", "e", "f"])])
    store.annotators_per_item = 2

    def by_text(annotator, item_id, texts):
        item = store.item(item_id, annotator)
        keys = {c.response: k for k, c in zip(item.keys, item.candidates)}
        store.submit(item_id, annotator, item.version, [[keys[t]] for t in texts])

    by_text("ann", 1, ["a", "b", "c"])
    by_text("bob", 1, ["a", "b", "c"])  # full agreement
    by_text("ann", 2, ["d", "e", "f"])
    by_text("bob", 2, ["f", "e", "d"])  # full disagreement
    rows, report = export_rows(store)
    assert len(rows) == 4
    (pair,) = report["annotator_pairs"]
    assert pair["annotators"] == ["ann", "bob"] and pair["items"] == 2
    assert pair["agreement"] == pytest.approx(0.5) and pair["kendall_tau"] == pytest.approx(0.0)
    kept, report = export_rows(store, min_agreement=0.9)
    assert {r["item"] for r in kept} == {1} and report["dropped"] == {"item agreement below 0.9": 2}


def test_a_judge_is_compared_with_the_people(tmp_path):
    store = make_store(tmp_path)
    item = store.item(1, "ann")
    keys = {c.response: k for k, c in zip(item.keys, item.candidates)}
    store.submit(1, "ann", item.version, [[keys["Great film."]], [keys["Okay film."]], [keys["Bad film."]]])
    judged = store.item(1, "judge:rule")
    jkeys = {c.response: k for k, c in zip(judged.keys, judged.candidates)}
    store.submit(
        1, "judge:rule", None, [[jkeys["Great film."], jkeys["Okay film."]], [jkeys["Bad film."]]], source="judge"
    )
    _, report = export_rows(store)
    (judge,) = report["judges_vs_people"]
    assert judge["judge"] == "judge:rule" and judge["agreement"] == pytest.approx(2 / 3)
    humans, _ = export_rows(store, sources=("human",))
    assert [r["source"] for r in humans] == ["human"]


def test_the_reward_stage_reads_the_database_directly(tmp_path, embedded_tokenizer):
    messages = [{"role": "user", "content": "Review a film."}]
    store = LabelStore(tmp_path / "labels.sqlite", create=True)
    store.add_candidates("r", 1, "sft", {}, [(messages, None, "Review a film.", ["Great.", "Bad.", "Fine."])])
    store.add_candidates("r", 1, "sft", {}, [("Rate a hotel.", None, "Rate a hotel.", ["Lovely.", "Awful."])])
    for _ in range(2):
        item = store.next_item("ann")
        store.submit(
            item.id, "ann", item.version, [item.keys[:2], item.keys[2:]] if len(item.keys) == 3 else [item.keys]
        )
    rows = [row for _, row in read_rows(str(store.path))]
    assert len(rows) == 1, "a ranking that ties every candidate teaches nothing and is left out"
    assert rows[0]["responses"][0][0]["role"] == "assistant", "a conversational prompt gets message responses"
    data = ComparisonsDataModule(train_files=str(store.path), val_fraction=0.0)
    data.tokenizer = embedded_tokenizer
    data.setup("fit")
    (example,) = data.train_examples
    assert len(example.pairs) == 2, "two tied best answers, each over the third"
    assert rows[0]["prompt"] == messages


def test_a_file_that_is_not_a_labelling_database_is_named(tmp_path):
    bogus = tmp_path / "notes.sqlite"
    bogus.write_text("just text")
    with pytest.raises(LabelError, match="notes.sqlite"):
        LabelStore(bogus)
    with pytest.raises(LabelError, match="missing.sqlite: no such labelling database"):
        LabelStore(tmp_path / "missing.sqlite")


def test_opening_a_file_that_is_not_a_database_leaves_it_untouched(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with pytest.raises(LabelError, match="not a labelling database"):
        LabelStore(empty)
    assert empty.read_bytes() == b"" and not (tmp_path / "empty.sqlite-wal").exists()


def test_a_database_from_before_cut_off_answers_were_recorded_is_upgraded_in_place(tmp_path):
    from rlhf_lightning.data import labels

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(labels._SCHEMA.replace("    ended INTEGER,\n", ""))  # version 1's tables
    db.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('annotators_per_item', '1')")
    db.commit()
    db.close()
    store = LabelStore(path)
    answers = ["Great.", ("Bad and", False)]
    store.add_candidates("r", 1, "sft", {}, [("Review a film.", None, "Review a film.", answers)])
    assert [(c.response, c.ended) for c in store.item(1, "x").candidates] == [("Great.", None), ("Bad and", False)]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
    item = store.next_item("ann")
    store.submit(item.id, "ann", item.version, [[k] for k in item.keys])
    (row,) = [row for _, row in read_rows(str(path))]
    assert dict(zip(row["responses"], row["ended"])) == {"Great.": None, "Bad and": False}


def test_the_reward_stage_leaves_a_ranked_cut_off_answer_out(tmp_path, char_tokenizer):
    store = LabelStore(tmp_path / "labels.sqlite", create=True)
    answers = [("Great film.", True), ("Bad film.", True), ("Okay film but the", False)]
    store.add_candidates("r", 1, "sft", {}, [("Review a film.", None, "Review a film.", answers)])
    item = store.next_item("ann")
    store.submit(item.id, "ann", item.version, [[k] for k in item.keys])
    data = ComparisonsDataModule(train_files=str(store.path), val_fraction=0.0, chat_template="never")
    data.tokenizer = char_tokenizer
    data.setup("fit")
    (example,) = data.train_examples
    assert "Okay film but the" not in example.responses and len(example.pairs) == 1
    assert data.stats["cut-off responses left out"] == 1


def _people_and_a_judge(tmp_path, judge_agrees: bool, items: int = 6):
    """``items`` prompts ranked by two people the same way (shown order) and by a judge that agrees or reverses."""
    store = LabelStore(tmp_path / "labels.sqlite", create=True)
    answers = [[f"Great {i}.", f"Bad {i}.", f"Fine {i}."] for i in range(items)]
    store.add_candidates("r", 1, "sft", {}, [(f"Film {i}?", None, f"Film {i}?", answers[i]) for i in range(items)])
    store.annotators_per_item = 2
    for annotator in ("ann", "bea"):
        while (item := store.next_item(annotator)) is not None:
            by_text = {c.response: k for k, c in zip(item.keys, item.candidates)}
            order = sorted(by_text)  # the same order for both people: alphabetical
            store.submit(item.id, annotator, item.version, [[by_text[t]] for t in order])
    for item_id in store.unjudged_items("judge:rule"):
        item = store.item(item_id, "judge:rule")
        by_text = {c.response: k for k, c in zip(item.keys, item.candidates)}
        order = sorted(by_text, reverse=not judge_agrees)
        store.submit(item_id, "judge:rule", None, [[by_text[t]] for t in order], source="judge")
    return store


def _reward_data(store, tokenizer, **kwargs):
    data = ComparisonsDataModule(train_files=str(store.path), val_fraction=0.0, chat_template="never", **kwargs)
    data.tokenizer = tokenizer
    data.setup("fit")
    return data


def test_whose_rankings_train_the_reward_model_is_chosen_and_logged(tmp_path, char_tokenizer, caplog):
    store = _people_and_a_judge(tmp_path, judge_agrees=True)
    with caplog.at_level("INFO", logger="rlhf_lightning.data.labels"):
        people = _reward_data(store, char_tokenizer)
    assert people.stats["train examples"] == 12, "auto: the people's rankings when there are any"
    assert "reads the human rankings: 12 rows (ann 6, bea 6); not read: 6 judge rankings" in caplog.text
    assert _reward_data(store, char_tokenizer, label_sources=["human", "judge"]).stats["train examples"] == 18
    assert _reward_data(store, char_tokenizer, label_sources=["judge"]).stats["train examples"] == 6
    assert "disagree" not in caplog.text and "agrees with the people" not in caplog.text
    judged_only = LabelStore(tmp_path / "judge.sqlite", create=True)
    judged_only.add_candidates("r", 1, "sft", {}, [("Review a film.", None, "Review a film.", ["Good.", "Bad."])])
    item = judged_only.item(1, "judge:rule")
    judged_only.submit(1, "judge:rule", None, [[k] for k in item.keys], source="judge")
    assert _reward_data(judged_only, char_tokenizer).stats["train examples"] == 1, "auto: the judges' when no people"


def test_a_judge_that_disagrees_with_the_people_is_warned_about(tmp_path, char_tokenizer, caplog):
    store = _people_and_a_judge(tmp_path, judge_agrees=False)
    with caplog.at_level("INFO", logger="rlhf_lightning.data.labels"):
        _reward_data(store, char_tokenizer)
    assert "judge:rule agrees with the people on 0% of answer pairs over 12 shared items" in caplog.text


@pytest.mark.parametrize("sources", [[], ["people"], ["human", "robot"]])
def test_label_sources_that_name_no_known_source_are_refused(sources):
    with pytest.raises(ValueError, match="label_sources: expected 'auto' or a list of"):
        ComparisonsDataModule(train_files="x.sqlite", label_sources=sources)
