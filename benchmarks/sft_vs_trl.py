"""SFT training throughput and peak memory: rlhf_lightning vs TRL's SFTTrainer, side by side.

Both train LoRA (r 16, alpha 32, dropout 0, the 7 linear projections of every layer) on the embedded
SmolLM2-135M-Instruct in float32 on CPU, on the same rows in the same order (no shuffling), with the same
batch size, maximum length, learning rate and gradient clipping, loss on completion tokens only. Each run
is a fresh process (peak RSS is per process); runs alternate between the two so that machine noise hits
both alike. Step time covers forward, backward, clipping and the optimizer step; tokens are real
(non-padding) tokens.

    bash benchmarks/setup_trl_venv.sh             # once: TRL in its own venv
    .venv/bin/python benchmarks/sft_vs_trl.py     # prints a table, writes benchmarks/results/sft_vs_trl.json
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


def write_prompt_completion_data(path: Path, rows: int) -> None:
    """The shipped demonstrations as standard prompt/completion text (chat template applied to the prompt),
    a format both frameworks read the same way: prompt tokens, completion tokens, EOS."""
    from rlhf_lightning.data.readers import read_rows
    from rlhf_lightning.models import load_tokenizer

    tokenizer = load_tokenizer("embedded")
    with path.open("w") as f:
        for _, row in list(read_rows("builtin:demonstrations.jsonl"))[:rows]:
            user, assistant = row["messages"]
            prompt = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
            f.write(json.dumps({"prompt": prompt, "completion": assistant["content"]}) + "\n")


def run_ours(args: argparse.Namespace) -> dict:
    import lightning as L
    import torch

    from rlhf_lightning import DemonstrationsDataModule, SFTModule
    from rlhf_lightning.callbacks import SampleConfig
    from rlhf_lightning.models import LoraConfig, ModelConfig, count_parameters
    from rlhf_lightning.modules import OptimConfig

    torch.manual_seed(args.seed)
    module = SFTModule(
        model=ModelConfig(name_or_path="embedded"),
        lora=LoraConfig(r=args.lora_r, alpha=args.lora_alpha, dropout=0.0, target_modules=LORA_TARGETS.split(",")),
        optim=OptimConfig(lr=args.lr, warmup_steps=0, warmup_ratio=0.0, schedule="linear"),
        samples=SampleConfig(every_n_steps=0),
    )
    data = DemonstrationsDataModule(
        train_files=args.data,
        val_fraction=0.0,
        max_length=args.max_length,
        batch_size=args.batch_size,
        shuffle=False,
        chat_template="never",  # the prompts are already rendered: join them raw, as TRL does
    )
    timer = step_timer(args.warmup_steps, args.steps)
    trainer = L.Trainer(
        accelerator="cpu",
        default_root_dir=tempfile.mkdtemp(prefix="bench-run-"),  # the final adapter goes here, not into cwd
        max_steps=args.warmup_steps + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        callbacks=[timer],
    )
    trainer.fit(module, data)
    trainable, _ = count_parameters(module.model)
    return {
        "framework": "rlhf_lightning",
        **timer.result(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": trainable,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="runs per framework (alternating)")
    p.add_argument("--steps", type=int, default=10, help="measured optimizer steps per run")
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--rows", type=int, default=200, help="demonstrations used (enough for every step)")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE / "results" / "sft_vs_trl.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.json_out.write_text(json.dumps(run_ours(args)))
        return
    if not TRL_PYTHON.exists():
        sys.exit(f"no TRL environment at {TRL_PYTHON}: run bash benchmarks/setup_trl_venv.sh first")

    from rlhf_lightning.models import embedded_model_dir

    work = Path(tempfile.mkdtemp(prefix="sft-bench-"))
    args.data = str(work / "demos.jsonl")
    write_prompt_completion_data(Path(args.data), args.rows)
    common = [
        "--data", args.data, "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
        "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps), "--lora-r", str(args.lora_r),
        "--lora-alpha", str(args.lora_alpha), "--lr", str(args.lr), "--seed", str(args.seed),
    ]  # fmt: skip
    commands = {
        "rlhf_lightning": lambda out: [sys.executable, __file__, "--worker", "--json-out", str(out), *common],
        "trl": lambda out: [
            str(TRL_PYTHON),
            str(HERE / "trl_sft_worker.py"),
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
    runs = alternate(args.repeats, commands, work)
    report(args.out, "LoRA SFT on SmolLM2-135M-Instruct, float32", args, ("data",), runs)


if __name__ == "__main__":
    main()
