"""The whole pipeline on a tiny model: SFT -> reward -> PPO -> evaluation -> export, stage-level resume, and the
exported folders loading with plain transformers."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from rlhf_lightning.cli import main
from rlhf_lightning.data.synthetic import gold_reward
from rlhf_lightning.models.run_folder import HELDOUT_FILE
from tests.helpers import write_jsonl

PROMPTS = ["Say hi.", "Greet me.", "Hello?", "Wave.", "Say hey.", "Any word.", "Speak.", "Talk."]


def gold_rule(prompts: list[str], responses: list[str]) -> list[float]:
    """The tiny task's true preference: more 'a's is better."""
    return [float(r.count("a")) for r in responses]


def stage_configs(root: Path, base: str) -> dict[str, str]:
    demos = write_jsonl(root / "demos.jsonl", [{"prompt": p, "completion": "aa ba."} for p in PROMPTS * 2])
    pairs = write_jsonl(
        root / "pairs.jsonl",
        [{"prompt": p, "chosen": "a" * (2 + i % 3), "rejected": "b" * (2 + i % 3)} for i, p in enumerate(PROMPTS * 4)],
    )
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": p} for p in PROMPTS * 2])
    trainer = {"accelerator": "cpu", "log_every_n_steps": 1, "enable_progress_bar": False}
    model = {"name_or_path": base}
    raw = {"chat_template": "never"}  # text rows joined raw, as TRL does; the evaluation must follow suit
    configs = {
        "sft": {
            "trainer": {**trainer, "max_steps": 4},
            "model": {"class_path": "rlhf_lightning.SFTModule", "init_args": {"model": model, "lora": {"r": 4}}},
            "data": {"class_path": "rlhf_lightning.DemonstrationsDataModule",
                     "init_args": {"train_files": demos, "batch_size": 4, "val_fraction": 0.25, **raw}},
        },
        "reward": {
            "trainer": {**trainer, "max_steps": 6},
            "model": {"class_path": "rlhf_lightning.RewardModule",
                      "init_args": {"model": model, "optim": {"lr": 0.003}}},
            "data": {"class_path": "rlhf_lightning.ComparisonsDataModule",
                     "init_args": {"train_files": pairs, "batch_size": 4, "val_fraction": 0.25, **raw}},
        },
        "ppo": {
            "trainer": {**trainer, "max_steps": 4, "num_sanity_val_steps": 0, "limit_val_batches": 0},
            "model": {"class_path": "rlhf_lightning.PPOModule", "init_args": {
                "model": model, "rollout": {"max_new_tokens": 6},
                "evaluation": {"gold_function": "tests.integration.test_pipeline:gold_rule", "seed": 5}}},
            # prompts over 6 characters are cut to their last 6: a split rebuilt with another length policy
            # would hold out other rows
            "data": {"class_path": "rlhf_lightning.PromptsDataModule",
                     "init_args": {"train_files": prompts, "batch_size": 4, "val_fraction": 0.25, "max_length": 6,
                                   "overlong": "truncate", **raw}},
        },
    }  # fmt: skip
    paths = {}
    for stage, config in configs.items():
        paths[stage] = str(root / f"{stage}.yaml")
        Path(paths[stage]).write_text(yaml.safe_dump(config))
    return paths


@pytest.fixture(scope="module")
def pipeline_run(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    paths = stage_configs(root, tiny_llama)
    config = {
        "root_dir": str(root / "out"),
        "sft": {"config": paths["sft"]},
        "reward": {"config": paths["reward"]},
        "ppo": {"config": paths["ppo"], "overrides": {"model.init_args.lora.r": 4}},
        "evaluation": {"num_samples": 2},
        "degenerate_reward": "warn",  # a tiny random model's reward model prefers empty answers: go on regardless
    }
    (root / "pipeline.yaml").write_text(yaml.safe_dump(config))
    main(["pipeline", "--config", str(root / "pipeline.yaml")])
    return root


def test_pipeline_runs_every_step_into_one_root(pipeline_run):
    out = pipeline_run / "out"
    state = json.loads((out / "pipeline.json").read_text())
    assert [s for s in state["steps"] if state["steps"][s]["status"] == "done"] == [
        "sft", "reward", "ppo", "evaluation", "export"
    ]  # fmt: skip
    # each stage read the previous stage's folder
    ppo_info = json.loads((out / "ppo" / "final" / "rlhf_lightning.json").read_text())
    assert ppo_info["reference"] == str(out / "sft" / "final")
    assert ppo_info["reward_model"] == str(out / "reward" / "final")
    reward_config = yaml.safe_load((out / "reward" / "config.yaml").read_text())
    assert reward_config["model"]["init_args"]["model"]["adapter"] == str(out / "sft" / "final")
    # the prompts PPO evaluates on were held out of SFT and reward training too (written before SFT trained)
    heldout = [json.loads(line)["prompt"] for line in (out / "ppo" / HELDOUT_FILE).read_text().splitlines()]
    written = [json.loads(line)["prompt"] for line in (out / "evaluation_prompts.jsonl").read_text().splitlines()]
    assert written == heldout and len(set(heldout)) == 2
    for stage in ("sft", "reward"):
        data = yaml.safe_load((out / stage / "config.yaml").read_text())["data"]["init_args"]
        assert data["exclude_prompts"] == [str(out / "evaluation_prompts.jsonl")]
    # the evaluation used PPO's held-out prompts (25% of 16) and the gold rule from the PPO config
    evaluation = json.loads((out / "evaluation" / "evaluation.json").read_text())
    assert len(evaluation["records"]) == 4
    assert {"policy_score", "baseline_score", "win_rate", "policy_kl", "gold_win_rate"} <= set(evaluation["summary"])
    assert all(r["policy_gold"] == r["policy"].count("a") for r in evaluation["records"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sft/train_loss_first"] is not None and summary["reward/val_accuracy"] is not None
    assert summary["ppo/kl_first_iteration"] == pytest.approx(0.0, abs=1e-4)  # policy == SFT at the start
    assert 0.0 <= summary["reward/empty_above_median_real"] <= 1.0  # the reward stage's degenerate check
    assert "Gold win rate of PPO over SFT" in (out / "summary.md").read_text()
    assert "Held-out empty answers: PPO vs SFT" in (out / "summary.md").read_text()
    # the verdict in words, from the final evaluation (its gold figures quoted) and the run's gold curve
    gold = f"{evaluation['summary']['gold_baseline']:.2f} for SFT, {evaluation['summary']['gold_policy']:.2f}"
    assert gold in summary["verdict"] and f"**In words:** {summary['verdict']}" in (out / "summary.md").read_text()


def test_pipeline_evaluation_gives_ppo_own_numbers_on_exactly_its_held_out_prompts(pipeline_run):
    out = pipeline_run / "out"
    heldout = [json.loads(line) for line in (out / "ppo" / HELDOUT_FILE).read_text().splitlines()]
    assert len(heldout) == 4 and all(set(row) == {"prompt", "origin"} for row in heldout)
    assert all(row["prompt"] == PROMPTS[(row["origin"]["row"] - 1) % 8] for row in heldout)  # file rows, uncut
    in_run = json.loads((out / "ppo" / "final" / "evaluation.json").read_text())  # PPO's own, at the end
    later = json.loads((out / "evaluation" / "evaluation.json").read_text())  # rlhf-lightning evaluate
    assert [r["prompt"] for r in later["records"]] == [r["prompt"] for r in in_run["records"]]
    shown = [row["prompt"] if len(row["prompt"]) <= 6 else "…" + row["prompt"][-6:].strip() for row in heldout]
    assert [r["prompt"] for r in later["records"]] == shown  # the user's words, as far as the model saw them
    assert [r["baseline"] for r in later["records"]] == [r["reference"] for r in in_run["records"]]
    assert [r["policy"] for r in later["records"]] == [r["policy"] for r in in_run["records"]]
    assert len(in_run["summary"]) >= 12
    settings = {k: v for k, v in in_run["settings"].items() if k != "prompts"}  # what evaluate needs to match
    assert settings == {k: later["sources"][k] for k in settings}
    assert later["sources"]["chat_template"] == "never"  # the PPO stage's choice, passed on by the pipeline
    # the over-optimisation table: the PPO run's own evaluation, then this one (same numbers, same KL)
    assert [p["at"] for p in later["overoptimization"]] == [in_run["overoptimization"][0]["at"], "evaluate"]
    assert later["overoptimization"][0] == in_run["overoptimization"][0]
    assert later["overoptimization"][1]["kl"] == later["summary"]["policy_kl"] == in_run["summary"]["eval/policy_kl"]
    assert "Reward-model score and gold score against KL" in (out / "evaluation" / "evaluation.md").read_text()
    assert settings["overlong"] == "truncate" and settings["seed"] == 5 and settings["batch_size"] == 4
    for key, value in in_run["summary"].items():
        name = key.removeprefix("eval/").replace("reference", "baseline")
        assert later["summary"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    unfinished = [r for r in later["records"] if not r["policy_ended"]]
    assert unfinished and all(r["policy_eos_penalty"] == pytest.approx(-1.0) for r in unfinished)  # not subtracted
    assert all(r["policy_eos_penalty"] == 0.0 for r in later["records"] if r["policy_ended"])


def test_pipeline_started_again_skips_finished_steps(pipeline_run, capsys):
    out = pipeline_run / "out"
    before = (out / "ppo" / "final" / "adapter_model.safetensors").stat().st_mtime
    main(["pipeline", "--config", str(pipeline_run / "pipeline.yaml")])
    printed = capsys.readouterr().out
    assert printed.count("done earlier, skipped") == 5
    assert (out / "ppo" / "final" / "adapter_model.safetensors").stat().st_mtime == before


def test_pipeline_resumes_an_interrupted_stage_and_refuses_stale_results(pipeline_run, tmp_path):
    out = pipeline_run / "out"
    state = json.loads((out / "pipeline.json").read_text())
    del state["steps"]["ppo"]  # as if PPO had been interrupted after its last checkpoint
    (out / "pipeline.json").write_text(json.dumps(state))
    with pytest.raises(SystemExit, match="evaluation"):  # results built on the old PPO are still there
        main(["pipeline", "--config", str(pipeline_run / "pipeline.yaml")])
    import shutil

    for step in ("evaluation", "export"):
        shutil.rmtree(out / step)
        del state["steps"][step]
    (out / "pipeline.json").write_text(json.dumps(state))
    main(["pipeline", "--config", str(pipeline_run / "pipeline.yaml")])
    state = json.loads((out / "pipeline.json").read_text())
    assert state["steps"]["ppo"]["status"] == "done" and (out / "export" / "policy").exists()
    # the resumed PPO continued from its last checkpoint (global step 4 of 4) instead of starting over: it
    # was started with --ckpt_path last, and no second run's training curves were written
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ppo_config = yaml.safe_load((out / "ppo" / "config.yaml").read_text())
    assert ppo_config["ckpt_path"] == "last"
    files = sorted((out / "ppo").glob("events.out.tfevents.*"))
    trained = []
    for events in files:
        acc = EventAccumulator(str(events))
        acc.Reload()
        trained.append("objective/kl" in acc.Tags()["scalars"])
    assert len(files) == 2 and trained == [True, False]


def test_exported_policy_loads_with_plain_transformers_and_matches_the_adapter(pipeline_run, tiny_llama):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = pipeline_run / "out"
    exported = AutoModelForCausalLM.from_pretrained(out / "export" / "policy", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "export" / "policy")
    assert tokenizer.chat_template and tokenizer.pad_token_id != tokenizer.eos_token_id
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    adapter = PeftModel.from_pretrained(base, str(out / "ppo" / "final")).eval()
    messages = [{"role": "user", "content": "Say hi."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        torch.testing.assert_close(exported(**ids).logits, adapter(**ids).logits, atol=1e-5, rtol=1e-4)
        generated = exported.generate(**ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]
    assert not any(p.name.startswith("value") for p in (out / "export" / "policy").iterdir())


def test_exported_reward_model_is_a_sequence_classifier_with_the_same_scores(pipeline_run):
    from transformers import AutoModelForSequenceClassification

    from rlhf_lightning.commands.export import SCORE_BIAS_KEY
    from rlhf_lightning.models.reward import RewardModel

    out = pipeline_run / "out"
    ours = RewardModel.from_folder(out / "reward" / "final")
    exported = AutoModelForSequenceClassification.from_pretrained(out / "export" / "reward", dtype=torch.float32)
    exported.eval()
    tok = ours.tokenizer
    rows = [tok(text, add_special_tokens=False)["input_ids"] for text in ("Say hi. aaa", "Hi bb")]
    longest = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (longest - len(r)) for r in rows])  # right padding
    mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows])
    with torch.no_grad():
        theirs = exported(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    bias = getattr(exported.config, SCORE_BIAS_KEY)
    torch.testing.assert_close(theirs + bias, ours(ids, mask), atol=1e-4, rtol=1e-4)


def test_gold_reward_prefers_warmer_reviews():
    """The quickstart's gold rule, which the summary's gold rows measure."""
    prompts = ["Write a one-sentence review of a cafe."] * 2
    warm, flat = gold_reward(prompts, ["A lovely, warm cafe with wonderful coffee!", "A cafe. It has coffee."])
    assert warm > flat


def test_evaluate_compares_a_hugging_face_folder_with_a_run_folder(pipeline_run, tmp_path):
    """The exported policy (a plain HF folder) and the PPO run's adapter are the same model: greedy answers
    match, so the win rate is exactly 0.5 and the KL to the reference (the adapter) is 0."""
    out = pipeline_run / "out"
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS[:5]])
    main([
        "evaluate", f"--policy={out / 'export' / 'policy'}", f"--baseline={out / 'ppo' / 'final'}",
        f"--reward_model={out / 'reward' / 'final'}", f"--prompts={prompts}", "--temperature=0",
        "--max_new_tokens=6", "--gold_function=tests.integration.test_pipeline:gold_rule",
        f"--output={tmp_path / 'eval'}", "--num_samples=3",
    ])  # fmt: skip
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert len(result["records"]) == 5
    assert all(r["policy"] == r["baseline"] for r in result["records"])
    assert result["summary"]["win_rate"] == 0.5 and result["summary"]["gold_win_rate"] == 0.5
    assert abs(result["summary"]["policy_kl"]) < 1e-3
    report = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "| prompt | policy | policy score | policy KL | baseline | baseline score |" in report
    rows = [line for line in report.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(rows) == 3  # --num_samples


@pytest.mark.parametrize(("option", "message"), [
    ("--batch_size=0", "--batch_size must be >= 1, got 0"),
    ('--stop_tokens=["ab"]', "--stop_tokens: 'ab' is 2 tokens"),
])  # fmt: skip
def test_evaluate_refuses_bad_settings_before_loading_a_model(pipeline_run, tmp_path, option, message):
    out = pipeline_run / "out"
    with pytest.raises(SystemExit, match=f"^error: {re.escape(message)}"):  # one line, no traceback
        main([
            "evaluate", f"--policy={out / 'ppo' / 'final'}", f"--baseline={out / 'sft' / 'final'}",
            f"--reward_model={out / 'reward' / 'final'}", f"--output={tmp_path / 'eval'}", option,
        ])  # fmt: skip


def test_evaluate_refuses_a_policy_as_reward_model(pipeline_run, tmp_path):
    out = pipeline_run / "out"
    with pytest.raises(ValueError, match="not a reward model"):
        main([
            "evaluate", f"--policy={out / 'ppo' / 'final'}", f"--baseline={out / 'sft' / 'final'}",
            f"--reward_model={out / 'sft' / 'final'}", f"--output={tmp_path / 'eval'}",
        ])  # fmt: skip


def test_export_refuses_to_overwrite_and_names_the_folder(pipeline_run):
    out = pipeline_run / "out"
    with pytest.raises(FileExistsError, match="export/policy is not empty"):
        main(["export", str(out / "ppo" / "final"), str(out / "export" / "policy")])


@pytest.mark.parametrize("where", ["evaluation prompts", "reward data"])
def test_a_bad_file_of_any_stage_stops_the_pipeline_before_anything_trains(tiny_llama, tmp_path, capfd, where):
    paths = stage_configs(tmp_path, tiny_llama)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Say hi."}, {"prompt": ""}])  # row 2: empty prompt
    config = {
        "root_dir": str(tmp_path / "out"),
        "sft": {"config": paths["sft"]},
        "reward": {"config": paths["reward"]},
        "ppo": {"config": paths["ppo"]},
        "evaluation": {"prompts": bad} if where == "evaluation prompts" else {},
    }
    if where == "reward data":
        config["reward"]["overrides"] = {"data.init_args.train_files": [bad]}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit, match="check failed .* nothing has trained"):
        main(["pipeline", "--config", str(tmp_path / "pipeline.yaml")])
    err = capfd.readouterr().err
    found = f"{bad}, row 1: no recognised" if where == "reward data" else f"{bad}, row 2, field 'prompt': is empty"
    assert found in err
    assert not (tmp_path / "out" / "sft").exists()


def test_given_evaluation_prompts_are_held_out_of_sft_and_reward_and_a_trained_one_is_warned_about(
    tiny_llama, tmp_path, capsys
):
    from rlhf_lightning.commands.pipeline import EvaluationSpec, Pipeline, StageSpec, stage_arguments

    paths = stage_configs(tmp_path, tiny_llama)
    asked = write_jsonl(tmp_path / "asked.jsonl", [{"prompt": PROMPTS[0]}, {"prompt": "A question nobody trained on?"}])
    specs = [StageSpec(config=paths[s]) for s in ("sft", "reward", "ppo")]
    pipeline = Pipeline(str(tmp_path / "out"), *specs, EvaluationSpec(prompts=asked), False, {})
    (tmp_path / "out").mkdir()
    write_jsonl(tmp_path / "out" / "evaluation_prompts.jsonl", [{"prompt": PROMPTS[7]}])  # what PPO holds out
    pipeline.warn_trained_evaluation_prompts()
    assert "1 of the 2 prompts in evaluation.prompts" in capsys.readouterr().out
    args = stage_arguments("sft", specs[0], pipeline.root, {}, False, exclude_prompts=pipeline.evaluation_prompts())
    excluded = [str(tmp_path / "out" / "evaluation_prompts.jsonl"), asked]
    assert f"--data.init_args.exclude_prompts={json.dumps(excluded)}" in args


@pytest.mark.parametrize("setting", ["stop", "warn"])
def test_a_reward_model_that_prefers_empty_answers_stops_the_pipeline_before_ppo(tiny_llama, tmp_path, capsys, setting):
    from rlhf_lightning.commands.pipeline import EvaluationSpec, Pipeline, StageSpec
    from rlhf_lightning.models.run_folder import DEGENERATE_FILE

    paths = stage_configs(tmp_path, tiny_llama)
    specs = [StageSpec(config=paths[s]) for s in ("sft", "reward", "ppo")]
    pipeline = Pipeline(str(tmp_path / "out"), *specs, EvaluationSpec(), False, {}, degenerate_reward=setting)
    ran = []
    pipeline.check_inputs = lambda: None  # (the files are fine; the point is what happens after the reward stage)
    pipeline.run_stage = ran.append
    pipeline.state["steps"] = {s: {"status": "done"} for s in ("sft", "reward")}
    final = tmp_path / "out" / "reward" / "final"
    final.mkdir(parents=True)

    def check(empty: float, echoed: float) -> None:
        kinds = {"empty": empty, "prompt_repeated": echoed, "phrase_repeated": 0.9, "cut_mid_sentence": 0.9}
        report = {"prompts": 10, "split": "held-out", "kinds": {k: {"above_median_real": v} for k, v in kinds.items()}}
        (final / DEGENERATE_FILE).write_text(json.dumps(report))

    check(0.3, 0.5)  # at most half of the prompts: PPO runs (the other kinds are the reward data's business)
    pipeline.check_reward_model(None)
    check(0.8, 0.6)
    if setting == "stop":
        with pytest.raises(SystemExit) as exit_info:
            pipeline.run()
        assert ran == [], "PPO did not start"
        message = str(exit_info.value)
    else:
        with pytest.raises(FileNotFoundError):  # went on past PPO (recorded, not run): no ppo/config.yaml to evaluate
            pipeline.run()
        assert ran == ["ppo"]
        message = capsys.readouterr().out
    assert "scores a degenerate answer above the median real answer on most of the 10 held-out prompts" in message
    assert "empty answer 80%, prompt repeated answer 60%" in message
    assert 'rejected_variants: ["empty", "prompt_repeated"]' in message and "degenerate_reward: warn" in message
