"""``rlhf-lightning label judge`` and ``label export``: machine rankings recorded as a judge's, the export the
reward stage reads, and its agreement report."""

import json
import math

import pytest

from rlhf_lightning.cli import main
from rlhf_lightning.data.labels import LabelStore
from rlhf_lightning.evaluation.judges import ConstitutionJudge, RuleJudge

RULE = "tests.commands.test_label:count_a"


def count_a(prompts, responses):
    return [float(r.count("a")) for r in responses]


@pytest.fixture
def database(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite", create=True)
    rows = [("Say something.", None, "Say something.", ["aaa", "a", "b", "aa"]), ("More?", None, "More?", ["ba", "ab"])]
    store.add_candidates("r", 1, "sft", {}, rows)
    return store.path


def test_a_rule_judge_ranks_every_item_once_with_ties_and_its_scores(database):
    main(["label", "judge", str(database), f"--judge={RULE}", "--progress=false"])
    store = LabelStore(database)
    judgements = store.judgements()
    assert [j["item"] for j in judgements] == [1, 2]
    first, second = judgements
    assert first["annotator"] == f"judge:{RULE}" and first["source"] == "judge"
    assert {c.response: first["ranks"][c.id] for c in first["candidates"]} == {"aaa": 1, "aa": 2, "a": 3, "b": 4}
    assert set(second["ranks"].values()) == {1}, "equal scores are a tie"
    assert first["comment"] == "scores, in the order of the exported responses: 3, 1, 0, 2"  # aaa, a, b, aa
    main(["label", "judge", str(database), f"--judge={RULE}", "--progress=false"])
    assert len(LabelStore(database).judgements()) == 2, "a second run has nothing left to rank"


def test_export_writes_reward_rows_and_the_judges_agreement_with_people(database, tmp_path, capsys):
    store = LabelStore(database)
    item = store.next_item("ann")  # a person ranks item 1 differently from the rule on one pair
    by_text = {c.response: k for k, c in zip(item.keys, item.candidates)}
    store.submit(item.id, "ann", item.version, [[by_text[t]] for t in ("aa", "aaa", "a", "b")])
    main(["label", "judge", str(database), f"--judge={RULE}", "--progress=false"])
    out = tmp_path / "export" / "rows.jsonl"
    main(["label", "export", str(database), str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2, "item 2's judge ranking ties everything and teaches nothing"
    assert {r["source"] for r in rows} == {"human", "judge"}
    human = next(r for r in rows if r["source"] == "human")
    assert dict(zip(human["responses"], human["ranking"])) == {"aa": 1, "aaa": 2, "a": 3, "b": 4}
    report = json.loads((tmp_path / "export" / "rows.agreement.json").read_text())
    (judge,) = report["judges_vs_people"]
    assert judge["agreement"] == pytest.approx(5 / 6) and judge["kendall_tau"] == pytest.approx(4 / 6)
    assert "Kendall tau-b" in capsys.readouterr().out
    main(["label", "export", str(database), str(out), "--sources=[human]"])
    assert [json.loads(line)["source"] for line in out.read_text().splitlines()] == ["human"]


def test_judge_options_are_checked(database, tmp_path, capsys):
    with pytest.raises(SystemExit, match="exactly one of"):
        main(["label", "judge", str(database)])
    with pytest.raises(SystemExit, match="no such file"):
        main(["label", "judge", str(database), f"--constitution={tmp_path / 'missing.txt'}"])
    with pytest.raises(SystemExit, match="cannot import"):
        main(["label", "judge", str(database), "--judge=no.such:function"])
    with pytest.raises(SystemExit, match="no such labelling database"):
        main(["label", "export", str(tmp_path / "none.sqlite"), str(tmp_path / "out.jsonl")])


def nan_for_the_first(prompts, responses):
    return [float("nan")] + [1.0] * (len(responses) - 1)


def one_score(prompts, responses):
    return [1.0]


def test_a_rule_judge_must_give_one_finite_score_per_response():
    from rlhf_lightning.models.score_function import ScoreError

    with pytest.raises(ScoreError, match="judge tests.commands.test_label:nan_for_the_first"):
        RuleJudge("tests.commands.test_label:nan_for_the_first").scores("p", ["a", "b"])
    with pytest.raises(ScoreError, match="judge tests.commands.test_label:one_score"):
        RuleJudge("tests.commands.test_label:one_score").scores("p", ["a", "b"])


def test_the_constitution_judge_scores_each_answer_by_yes_against_no(tiny_llama, tmp_path):
    principles = tmp_path / "principles.txt"
    principles.write_text("Be kind.\nBe brief.\n")
    judge = ConstitutionJudge(str(principles), tiny_llama, batch_size=2)
    scores = judge.scores("Say hi.", ["hi", "go away", "hello there", "hi"])
    assert len(scores) == 4 and all(math.isfinite(s) for s in scores)
    assert scores[0] == pytest.approx(scores[3], abs=1e-5), "the same answer gets the same score in any batch"
    question = judge.tokenizer.decode(judge.question("Say hi.", "go away"))
    assert "Be kind." in question and "go away" in question and "Say hi." in question
    # the score is log p(Yes) - log p(No) of the model's next token
    import torch

    from rlhf_lightning.ops import left_pad

    ids, mask = left_pad([judge.question("Say hi.", "hi")], 0, "cpu")
    with torch.no_grad():
        logits = judge.role.model(input_ids=ids, attention_mask=mask).logits[0, -1].float()
    logprobs = torch.log_softmax(logits, -1)
    assert scores[0] == pytest.approx((logprobs[judge.answer_ids[0]] - logprobs[judge.answer_ids[1]]).item(), abs=1e-4)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    from rlhf_lightning.data.errors import OptionError

    with pytest.raises(OptionError, match="empty"):
        ConstitutionJudge(str(empty), tiny_llama)


def test_export_never_overwrites_a_database(database, tmp_path):
    before = database.read_bytes()
    for target in (database, tmp_path / "other.sqlite", tmp_path / "rows.db"):
        with pytest.raises(SystemExit, match="is a database"):
            main(["label", "export", str(database), str(target)])
    other = tmp_path / "renamed.jsonl"  # a database under a JSONL name is refused too
    other.write_bytes(before)
    with pytest.raises(SystemExit, match="is a database"):
        main(["label", "export", str(database), str(other)])
    assert database.read_bytes() == before and LabelStore(database).counts()["candidates"] == 6


def test_a_judge_module_in_the_current_folder_is_found(database, tmp_path, monkeypatch):
    (tmp_path / "my_rules_for_test.py").write_text(
        "def short(prompts, responses):\n    return [-len(r) for r in responses]\n"
    )
    monkeypatch.chdir(tmp_path)
    main(["label", "judge", str(database), "--judge=my_rules_for_test:short", "--progress=false"])
    first = LabelStore(database).judgements()[0]
    assert {c.response: first["ranks"][c.id] for c in first["candidates"]}["b"] == 1


SEEN: list[list[str]] = []


def record_prompts(prompts, responses):
    SEEN.append(list(prompts))
    return [float(len(r)) for r in responses]


def test_a_rule_judge_sees_every_turn_of_a_conversation(tmp_path):
    conversation = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Now in French?"},
    ]
    tools = [{"function": {"name": "translate"}, "type": "function"}]
    store = LabelStore(tmp_path / "labels.sqlite", create=True)
    rows = [(conversation, tools, "Now in French?", ["Bonjour", "Salut"]), ("Plain.", None, "Plain.", ["a", "bb"])]
    store.add_candidates("r", 1, "sft", {}, rows)
    SEEN.clear()
    main(["label", "judge", str(store.path), "--judge=tests.commands.test_label:record_prompts", "--progress=false"])
    whole = (
        'Tools: [{"function": {"name": "translate"}, "type": "function"}]\n\n'
        "System: Answer in one word.\n\nUser: Say hello.\n\nAssistant: Hello.\n\nUser: Now in French?"
    )
    assert SEEN == [[whole, whole], ["Plain.", "Plain."]]  # a text prompt is passed as it is
    assert len(store.judgements()) == 2
