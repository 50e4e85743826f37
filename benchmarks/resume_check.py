"""Exact resume at real scale: the development task's PPO stage run through, and run again from one of its
checkpoints in a fresh folder; every scalar logged after the checkpoint, the evaluations and the final adapters
must be equal.

    .venv/bin/python benchmarks/resume_check.py --sft runs/everyday-sft/final --reward runs/everyday-reward/final \
        --root runs/resume-check                                              # ~45 min on 2 CPU cores

The SFT and reward folders come from the `sft` and `reward` stages of configs/everyday.yaml (benchmarks/README.md,
"Development task: PPO"). The PPO options are that stage's, with a checkpoint every 4 iterations, all kept. A run
whose ``final/`` already exists is not run again, so the comparison can be redone on finished runs. Prints a table
and writes benchmarks/results/everyday_resume.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rlhf_lightning.evaluation.report import read_scalars  # noqa: E402

STEPS_PER_ITERATION = 4  # ppo_quick.yaml: ppo_epochs 2 x num_minibatches 2 optimizer steps
TAGS = ("objective/kl", "objective/scores", "objective/raw_scores", "loss/policy_avg", "loss/value_avg",
        "eval/policy_kl", "eval/policy_score", "eval/gold_policy", "eval/gold_win_rate")  # fmt: skip


def ppo_command(sft: str, reward: str, root: Path) -> list[str]:
    return [
        sys.executable, "-m", "rlhf_lightning.cli", "fit", "--config", "configs/ppo_quick.yaml",
        f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
        f"--model.init_args.model.adapter={sft}", f"--model.init_args.reward_model={reward}",
        "--data.init_args.train_files=builtin:everyday_prompts.jsonl",
        "--data.init_args.val_files=builtin:everyday_prompts_heldout.jsonl",
        "--model.init_args.rollout.max_new_tokens=96",
        "--model.init_args.evaluation.gold_function=rlhf_lightning.tasks.everyday:gold_reward",
        "--model.init_args.evaluation.samples_every_n_iterations=4", "--trainer.val_check_interval=4",
        f"--checkpoint.every_n_train_steps={4 * STEPS_PER_ITERATION}", "--checkpoint.save_top_k=-1",
    ]  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", required=True, help="the task's SFT run's final folder")
    parser.add_argument("--reward", required=True, help="the task's reward run's final folder")
    parser.add_argument("--root", required=True, help="where the two PPO runs go (ppo-a, ppo-b)")
    parser.add_argument("--from-iteration", type=int, default=12, help="the checkpoint to resume from (x4)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "everyday_resume.json"))
    args = parser.parse_args()
    if args.from_iteration % 4:
        sys.exit("error: --from-iteration: checkpoints are written every 4 iterations")

    root = Path(args.root)
    whole, resumed = root / "ppo-a", root / "ppo-b"
    if not (whole / "final").exists():
        subprocess.run(ppo_command(args.sft, args.reward, whole), cwd=REPO, check=True)
    checkpoint = f"step{args.from_iteration * STEPS_PER_ITERATION:06d}.ckpt"
    if not (resumed / "final").exists():
        (resumed / "checkpoints").mkdir(parents=True, exist_ok=True)
        shutil.copy(whole / "checkpoints" / checkpoint, resumed / "checkpoints" / checkpoint)
        command = ppo_command(args.sft, args.reward, resumed) + [f"--ckpt_path={resumed / 'checkpoints' / checkpoint}"]
        subprocess.run(command, cwd=REPO, check=True)

    rows = []
    for tag in TAGS:
        a, b = read_scalars(whole, tag), read_scalars(resumed, tag)
        after = sorted(s for s in a if s >= args.from_iteration)  # logged at the iteration's index, from 0
        missing = [s for s in after if s not in b]
        diff = max((abs(a[s] - b[s]) for s in after if s in b), default=float("nan"))
        rows.append({"tag": tag, "steps_after_checkpoint": len(after), "missing_in_resumed": len(missing),
                     "max_abs_difference": diff, "last_whole": a[after[-1]] if after else None,
                     "last_resumed": b.get(after[-1]) if after else None})  # fmt: skip
    curves = [json.loads((r / "final" / "evaluation.json").read_text())["overoptimization"] for r in (whole, resumed)]
    files = ["adapter_model.safetensors", "value/adapter_model.safetensors", "value/score_head.safetensors"]
    identical = {f: sha256(whole / "final" / f) == sha256(resumed / "final" / f) for f in files}

    print(f"resumed from {checkpoint} (iteration {args.from_iteration}) in a fresh folder\n")
    print("| scalar | steps after the checkpoint | missing when resumed | max abs difference | last (whole, resumed) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['tag']} | {r['steps_after_checkpoint']} | {r['missing_in_resumed']} | "
              f"{r['max_abs_difference']:.3g} | {r['last_whole']}, {r['last_resumed']} |")  # fmt: skip
    print(f"\nover-optimisation curve equal: {curves[0] == curves[1]} ({len(curves[0])} and {len(curves[1])} points)")
    for f, same in identical.items():
        print(f"final/{f} byte-identical: {same}")
    exact = all(
        r["steps_after_checkpoint"] and not r["missing_in_resumed"] and r["max_abs_difference"] == 0 for r in rows
    )
    exact = exact and curves[0] == curves[1] and all(identical.values())
    print(f"\nexact resume: {exact}")
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}",
              "from_iteration": args.from_iteration, "scalars": rows, "curve_whole": curves[0],
              "curve_resumed": curves[1], "final_files_identical": identical, "exact": exact}  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
