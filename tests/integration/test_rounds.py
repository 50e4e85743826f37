"""The pipeline's rounds of feedback on a tiny model: candidates from the policy so far, ranked by a judge (or
waited for from people), a reward model on every ranking so far, PPO from the policy so far."""

import json
import sqlite3

import pytest
import yaml

from rlhf_lightning.cli import main
from rlhf_lightning.commands import pipeline as pipeline_module
from rlhf_lightning.commands.pipeline import EvaluationSpec, LabellingSpec, Pipeline, StageSpec
from rlhf_lightning.data.labels import LabelStore
from tests.integration.test_pipeline import stage_configs

JUDGE = "tests.integration.test_pipeline:gold_rule"


def pipeline_config(root, tiny_llama, **labelling):
    paths = stage_configs(root, tiny_llama)
    config = {
        "root_dir": str(root / "out"),
        "sft": {"config": paths["sft"]},
        # the tiny random model rarely ends an answer within 6 tokens: its cut-off candidates train without an end
        "reward": {
            "config": paths["reward"],
            "overrides": {"data.init_args.val_fraction": 0.0, "data.init_args.cut_off": "keep"},
        },
        "ppo": {"config": paths["ppo"], "overrides": {"model.init_args.lora.r": 4}},
        "evaluation": {"num_samples": 2},
        "labelling": {"prompts_per_round": 4, "num_candidates": 3, "temperature": 1.0, **labelling},
        "degenerate_reward": "warn",  # a tiny random model's reward model prefers empty answers: go on regardless
    }
    (root / "pipeline.yaml").write_text(yaml.safe_dump(config))
    return str(root / "pipeline.yaml")


@pytest.fixture(scope="module")
def judged_rounds(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("rounds")
    main(["pipeline", "--config", pipeline_config(root, tiny_llama, rounds=2, judge=JUDGE)])
    return root / "out"


def test_two_judged_rounds_run_unattended_each_from_the_policy_before(judged_rounds):
    out = judged_rounds
    state = json.loads((out / "pipeline.json").read_text())
    per_round = ["generate", "label", "reward", "ppo", "evaluation"]
    expected = ["sft", *(f"round-{n}/{s}" for n in (1, 2) for s in per_round), "export"]
    assert list(state["steps"]) == expected and all(v["status"] == "done" for v in state["steps"].values())
    first = json.loads((out / "round-1" / "ppo" / "final" / "rlhf_lightning.json").read_text())
    second = json.loads((out / "round-2" / "ppo" / "final" / "rlhf_lightning.json").read_text())
    assert first["reference"] == str(out / "sft" / "final")
    assert second["reference"] == str(out / "sft" / "final"), "the KL leash stays tied to SFT in every round"
    ppo = yaml.safe_load((out / "round-2" / "ppo" / "config.yaml").read_text())["model"]["init_args"]
    assert ppo["model"]["adapter"] == str(out / "round-1" / "ppo" / "final"), "round 2 continues round 1's policy"
    assert ppo["reference_adapter"] == str(out / "sft" / "final")
    assert second["reward_model"] == str(out / "round-2" / "reward" / "final")
    reward = yaml.safe_load((out / "round-2" / "reward" / "config.yaml").read_text())
    assert reward["data"]["init_args"]["train_files"] == [str(out / "labels.sqlite")]


def test_each_round_labels_new_prompts_from_its_own_policy_and_the_reward_model_sees_them_all(judged_rounds):
    store = LabelStore(judged_rounds / "labels.sqlite")
    judgements = store.judgements()
    assert {j["source"] for j in judgements} == {"judge"} and {j["annotator"] for j in judgements} == {"judge:" + JUDGE}
    by_round = {n: [j for j in judgements if j["round"] == n] for n in (1, 2)}
    assert by_round[1] and by_round[2]
    policies = {n: {c.policy for j in js for c in j["candidates"]} for n, js in by_round.items()}
    out = judged_rounds
    assert policies == {1: {str(out / "sft" / "final")}, 2: {str(out / "round-1" / "ppo" / "final")}}
    with sqlite3.connect(judged_rounds / "labels.sqlite") as db:
        items = dict(db.execute("SELECT round, COUNT(*) FROM items GROUP BY round").fetchall())
    # 4 prompts a round (this prompts file repeats each prompt, and repeats share an item)
    assert set(items) == {1, 2} and all(2 <= n <= 4 for n in items.values())
    for n in (1, 2):  # the judge ranked every item with two different answers to rank
        assert len({j["item"] for j in by_round[n]}) == store.round_progress(n)[0] > 0
    for j in judgements:  # the judge's ranking follows its rule: more 'a's ranks higher
        counts = {c.id: c.response.count("a") for c in j["candidates"]}
        assert all((counts[x] > counts[y]) == (j["ranks"][x] < j["ranks"][y]) for x in counts for y in counts if x != y)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["rounds"][1]["rankings_total"] == len(judgements) > summary["rounds"][0]["rankings_total"]
    assert all("eval/gold_policy" in r for r in summary["rounds"])
    # both KLs per round: to SFT, and to the policy the round started from (the same model in round 1)
    assert "eval/policy_kl_previous" not in summary["rounds"][0] and summary["rounds"][1]["eval/policy_kl_previous"]
    assert [r["ppo/reference"] for r in summary["rounds"]] == ["SFT", "SFT"]
    assert "| KL to SFT | KL to the round's start |" in (out / "summary.md").read_text()
    assert "## Rounds" in (out / "summary.md").read_text()
    assert (out / "export" / "policy").exists()


def test_with_people_the_pipeline_waits_for_rankings_and_goes_on_when_run_again(tiny_llama, tmp_path, capsys):
    config = pipeline_config(tmp_path, tiny_llama, rounds=1)
    with pytest.raises(SystemExit) as stopped:
        main(["pipeline", "--config", config])
    assert stopped.value.code == 3, "a waiting pipeline is not a finished one"
    printed = capsys.readouterr().out
    database = tmp_path / "out" / "labels.sqlite"
    assert "waiting for rankings: 0 of 4 items" in printed and f"rlhf-lightning label {database}" in printed
    assert not (tmp_path / "out" / "round-1" / "reward").exists()
    store = LabelStore(database)
    skipped = store.next_item("ann")  # a skipped item does not hold the round up
    store.submit(skipped.id, "ann", None, None, skip=True)
    while (item := store.next_item("ann")) is not None:
        store.submit(item.id, "ann", item.version, [[k] for k in item.keys])
    main(["pipeline", "--config", config])
    state = json.loads((tmp_path / "out" / "pipeline.json").read_text())
    assert state["steps"]["round-1/label"]["status"] == "done" and state["steps"]["export"]["status"] == "done"
    assert "4 of 4 items ranked or skipped" in capsys.readouterr().out


@pytest.mark.parametrize("reference", ["sft", "previous"])
def test_the_kl_reference_of_later_rounds_is_sft_unless_asked_otherwise(tmp_path, reference, monkeypatch):
    spec = StageSpec(config="ppo.yaml")
    labelling = LabellingSpec(rounds=2, judge=JUDGE, reference=reference)
    pipeline = Pipeline(str(tmp_path), spec, spec, spec, EvaluationSpec(), False, {}, labelling)
    calls = []
    monkeypatch.setattr(pipeline_module.subprocess, "call", lambda args: calls.append(args) or 1)  # no training
    with pytest.raises(SystemExit, match="round-2/ppo stage stopped"):
        pipeline.run_stage("round-2/ppo")
    (args,) = calls
    assert f"--model.init_args.model.adapter={tmp_path / 'round-1' / 'ppo' / 'final'}" in args
    references = [a for a in args if a.startswith("--model.init_args.reference_adapter=")]
    sft = f"--model.init_args.reference_adapter={tmp_path / 'sft' / 'final'}"
    assert references == ([sft] if reference == "sft" else [])
