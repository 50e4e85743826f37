"""Exact resume of a PPO run on the embedded SmolLM2-135M model with a reward model: a run killed by SIGKILL
after a checkpoint, with an evaluation and sample tables between the checkpoint and the kill, then resumed with
``--ckpt_path last``, logs and saves what the uninterrupted run does."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.helpers import ROOT, make_run_folder, run_cli, scalars, write_jsonl

SUBJECTS = ["cafe", "book", "film", "park", "gadget", "museum", "bakery", "podcast", "hotel", "bicycle", "library",
            "concert", "restaurant", "garden", "laptop", "novel", "beach", "theatre"]  # fmt: skip
PER_ITERATION = ("objective/kl", "objective/scores", "objective/entropy", "loss/policy_avg", "loss/value_avg",
                 "val/values_mean", "lr")  # fmt: skip
EVALUATION = ("eval/policy_kl", "eval/policy_score", "eval/reference_score", "eval/win_rate")


def ppo_args(folder: Path, run: Path, *extra: str) -> list[str]:
    """One pass (``max_epochs: 1``) over 16 prompts, 4 per iteration: 4 iterations of 2 optimizer steps; a
    checkpoint every 2 iterations, each followed by an evaluation of 2 held-out prompts; a sample table after
    every iteration; the SFT adapter as policy and reference, a reward-model adapter as reward and value."""
    return [
        "fit",
        "--model=rlhf_lightning.PPOModule",
        "--model.model.name_or_path=embedded",
        f"--model.model.adapter={folder / 'sft'}",
        f"--model.reward_model={folder / 'reward'}",
        "--model.lora.r=4",
        "--model.optim.lr=2e-4",
        "--model.rollout.max_new_tokens=16",
        "--model.ppo.ppo_epochs=1",
        "--model.ppo.num_minibatches=2",
        "--model.evaluation.samples_every_n_iterations=1",
        "--model.evaluation.num_samples=2",
        "--data=rlhf_lightning.PromptsDataModule",
        f"--data.train_files={folder / 'train.jsonl'}",
        f"--data.val_files={folder / 'heldout.jsonl'}",
        "--data.batch_size=4",
        "--data.max_length=64",
        f"--trainer.default_root_dir={run}",
        "--trainer.accelerator=cpu",
        "--trainer.max_epochs=1",
        "--trainer.val_check_interval=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.num_sanity_val_steps=0",
        "--checkpoint.every_n_train_steps=4",
        "--seed_everything=0",
        *extra,
    ]


def text_steps(run: Path, tag: str) -> set[int]:
    """Steps at which a TEXT table was written, over every event file of the run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = set()
    for events in run.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        if f"{tag}/text_summary" in acc.Tags()["tensors"]:
            steps |= {e.step for e in acc.Tensors(f"{tag}/text_summary")}
    return steps


def test_a_killed_ppo_run_on_the_embedded_model_resumes_exactly(tmp_path):
    # about 2.5 minutes on 2 CPU cores: three runs of the 135M model (one killed), 16-token answers
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"Review a {s} in one sentence."} for s in SUBJECTS[:16]])
    write_jsonl(tmp_path / "heldout.jsonl", [{"prompt": f"Review a {s} in one sentence."} for s in SUBJECTS[16:]])
    make_run_folder("embedded", tmp_path / "sft", "sft", 3)
    make_run_folder("embedded", tmp_path / "reward", "reward", 4)
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_cli(ppo_args(tmp_path, full))

    # killed at the start of iteration 3: after the checkpoint that ends iteration 1 (step 4), the evaluation
    # and sample table that follow it, and iteration 2
    kill = ["--trainer.callbacks+=tests.helpers.KillAfterStep", "--trainer.callbacks.stop_at=6"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    process = subprocess.run(
        [sys.executable, "-m", "rlhf_lightning.cli", *ppo_args(tmp_path, killed, *kill)],
        cwd=ROOT,
        env=env,
        capture_output=True,
    )
    assert process.returncode == -9, process.stderr.decode()[-3000:]
    assert sorted(scalars(killed, "objective/kl")) == [0, 1, 2]
    assert not (killed / "final").exists()
    run_cli(ppo_args(tmp_path, killed, "--ckpt_path=last"))

    for tag in PER_ITERATION:  # the same prompts, responses and updates at every iteration
        expected, resumed = scalars(full, tag), scalars(killed, tag)
        assert sorted(expected) == sorted(resumed) == [0, 1, 2, 3], tag
        for step in (2, 3):
            assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), (tag, step, expected, resumed)
    for tag in EVALUATION:  # the evaluation after the checkpoint is on the resumed run's curve
        expected, resumed = scalars(full, tag), scalars(killed, tag)
        assert sorted(resumed) == sorted(expected) and len(expected) >= 3, (tag, expected, resumed)
        for step, value in expected.items():
            assert resumed[step] == pytest.approx(value, rel=1e-5, abs=1e-6), (tag, step, expected, resumed)
    assert text_steps(killed, "samples") == text_steps(full, "samples") == {0, 1, 2, 3}

    curves = [json.loads((run / "final" / "evaluation.json").read_text())["overoptimization"] for run in (full, killed)]
    assert [p["at"] for p in curves[1]] == [p["at"] for p in curves[0]] == [2, 4]
    for expected, resumed in zip(*curves):
        assert resumed["kl"] == pytest.approx(expected["kl"], rel=1e-5, abs=1e-6)
        assert resumed["score"] == pytest.approx(expected["score"], rel=1e-5, abs=1e-6)

    saved = sorted(str(p.relative_to(full / "final")) for p in (full / "final").rglob("*.safetensors"))
    assert {"adapter_model.safetensors", "value/adapter_model.safetensors", "value/score_head.safetensors"} <= set(
        saved
    ), saved  # the policy adapter, the value adapter and the value head
    for weights in saved:
        expected, resumed = load_file(full / "final" / weights), load_file(killed / "final" / weights)
        assert expected.keys() == resumed.keys() and expected, weights
        for name, tensor in expected.items():
            assert (resumed[name] - tensor).abs().max().item() <= 1e-6 * max(1.0, tensor.abs().max().item()), name
