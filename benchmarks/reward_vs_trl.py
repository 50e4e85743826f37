"""Reward-model training: rlhf_lightning vs TRL's RewardTrainer, side by side: throughput, peak memory,
and held-out accuracy on the project's own preference data.

Both train LoRA (r 16, alpha 32, dropout 0, the 7 linear projections) plus a scalar head on the embedded
SmolLM2-135M-Instruct (from the base model, no SFT adapter) in float32 on CPU: same pairs in the same
order, batch 8 pairs, max length 256, lr 1e-4 with linear decay, gradient clipping 1.0, plain
Bradley-Terry loss. Data: the shipped comparisons with each 3-way ranking expanded into its 3 pairs (TRL
has no rankings); the last 10% of rows are held out. Each run is a fresh process; runs alternate.

    bash benchmarks/setup_trl_venv.sh
    .venv/bin/python benchmarks/reward_vs_trl.py     # prints a table, writes benchmarks/results/reward_vs_trl.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import HERE, LORA_TARGETS, TRL_PYTHON, alternate, report, step_timer


def write_pair_data(folder: Path, heldout_fraction: float = 0.1) -> tuple[str, str]:
    """Shipped comparisons as standard text pairs for TRL (chat-templated prompt, assistant text as responses,
    ``name.jsonl``) and the same pairs as conversations for rlhf_lightning (``name.chat.jsonl``): both then
    tokenize to the same ids (the chat template's control tokens as special tokens, not as text)."""
    from rlhf_lightning.data.readers import read_rows
    from rlhf_lightning.models import load_tokenizer

    tokenizer = load_tokenizer("embedded")
    rows = [row for _, row in read_rows("builtin:comparisons.jsonl")]
    cut = int(len(rows) * (1 - heldout_fraction))
    paths = []
    for name, part in (("train", rows[:cut]), ("eval", rows[cut:])):
        path = folder / f"{name}.jsonl"
        with path.open("w") as text, chat_path(path).open("w") as chat:
            for row in part:
                prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
                if "chosen" in row:
                    pairs = [(row["chosen"], row["rejected"])]
                else:
                    by_rank = [row["responses"][i] for i in sorted(range(3), key=lambda i: row["ranking"][i])]
                    pairs = [(by_rank[0], by_rank[1]), (by_rank[0], by_rank[2]), (by_rank[1], by_rank[2])]
                for chosen, rejected in pairs:
                    pair = {"prompt": prompt, "chosen": chosen[0]["content"], "rejected": rejected[0]["content"]}
                    text.write(json.dumps(pair) + "\n")
                    chat.write(json.dumps({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected}) + "\n")
        paths.append(str(path))
    return paths[0], paths[1]


def chat_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".chat.jsonl")


def run_ours(args: argparse.Namespace) -> dict:
    import lightning as L
    import torch

    from rlhf_lightning import ComparisonsDataModule, RewardModule
    from rlhf_lightning.models import LoraConfig, ModelConfig, count_parameters
    from rlhf_lightning.modules import OptimConfig

    torch.manual_seed(args.seed)
    module = RewardModule(
        model=ModelConfig(name_or_path="embedded"),
        lora=LoraConfig(r=args.lora_r, alpha=args.lora_alpha, dropout=0.0, target_modules=LORA_TARGETS.split(",")),
        optim=OptimConfig(lr=args.lr, warmup_steps=0, warmup_ratio=0.0, schedule="linear"),
        head_init_std=None,  # 1/sqrt(d+1), as when the recorded figures were measured
    )
    data = ComparisonsDataModule(
        train_files=str(chat_path(args.train)),
        val_fraction=0.0,
        max_length=args.max_length,
        batch_size=args.batch_size,
        shuffle=False,
        share_prompts=not args.unshared,
    )
    timer = step_timer(args.warmup_steps, args.steps)
    trainer = L.Trainer(
        accelerator="cpu",
        default_root_dir=tempfile.mkdtemp(prefix="bench-run-"),  # the final adapter goes here, not into cwd
        max_steps=args.train_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        callbacks=[timer],
    )
    trainer.fit(module, data)
    peak_after_training = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    heldout = ComparisonsDataModule(
        train_files=str(chat_path(args.eval)),
        val_fraction=0.0,
        max_length=args.max_length,
        batch_size=args.batch_size,
    )
    heldout.tokenizer = module.tokenizer
    heldout.setup()
    module.eval()
    correct = pairs = 0
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(
            heldout.train_examples, batch_size=args.batch_size, collate_fn=heldout.collate_fn()
        ):
            scores = module.scores(batch["input_ids"], batch["attention_mask"])
            correct += int((scores[batch["better"]] > scores[batch["worse"]]).sum())
            pairs += len(batch["better"])
    trainable, _ = count_parameters(module)
    return {
        "framework": "rlhf_lightning",
        **timer.result(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_mb_after_training": peak_after_training,
        "trainable_params": trainable,
        "heldout_accuracy": correct / pairs,
        "heldout_pairs": pairs,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="runs per framework (alternating)")
    p.add_argument("--train-steps", type=int, default=30, help="optimizer steps before held-out accuracy")
    p.add_argument("--steps", type=int, default=10, help="measured optimizer steps (after the warm-up)")
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per batch")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE / "results" / "reward_vs_trl.json")
    p.add_argument(
        "--also-unshared",
        action="store_true",
        help="also run rlhf_lightning with data.share_prompts false (every sequence computed alone)",
    )
    p.add_argument("--unshared", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--train", default=None, help=argparse.SUPPRESS)
    p.add_argument("--eval", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.json_out.write_text(json.dumps(run_ours(args)))
        return
    if not TRL_PYTHON.exists():
        sys.exit(f"no TRL environment at {TRL_PYTHON}: run bash benchmarks/setup_trl_venv.sh first")

    from rlhf_lightning.models import embedded_model_dir

    work = Path(tempfile.mkdtemp(prefix="reward-bench-"))
    args.train, args.eval = write_pair_data(work)
    common = [
        "--train", args.train, "--eval", args.eval, "--batch-size", str(args.batch_size),
        "--max-length", str(args.max_length), "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
        "--train-steps", str(args.train_steps), "--lora-r", str(args.lora_r), "--lora-alpha", str(args.lora_alpha),
        "--lr", str(args.lr), "--seed", str(args.seed),
    ]  # fmt: skip
    commands = {
        "rlhf_lightning": lambda out: [sys.executable, __file__, "--worker", "--json-out", str(out), *common],
        "trl": lambda out: [
            str(TRL_PYTHON),
            str(HERE / "trl_reward_worker.py"),
            "--model",
            str(embedded_model_dir()),
            *common,
            "--lora-targets",
            LORA_TARGETS,
            "--sampling",
            "sequential",
            "--json-out",
            str(out),
        ],  # fmt: skip
    }
    if args.also_unshared:
        worker = [sys.executable, __file__, "--worker", "--unshared", *common]
        commands["rlhf_lightning unshared"] = lambda out: [*worker, "--json-out", str(out)]
    runs = alternate(args.repeats, commands, work)
    args.heldout_pairs = runs["rlhf_lightning"][0]["heldout_pairs"]
    report(
        args.out, "LoRA reward model on SmolLM2-135M-Instruct, float32", args, ("train", "eval", "unshared"), runs,
        extra=("heldout_accuracy",),
    )  # fmt: skip


if __name__ == "__main__":
    main()
