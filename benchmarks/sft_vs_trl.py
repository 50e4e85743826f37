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
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


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

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.times, self.tokens, self._t = [], [], 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx >= args.warmup_steps:
                self.times.append(time.perf_counter() - self._t)
                self.tokens.append(int(batch["attention_mask"].sum()))

    torch.manual_seed(args.seed)
    module = SFTModule(
        model=ModelConfig(name_or_path="embedded"),
        lora=LoraConfig(r=args.lora_r, alpha=args.lora_alpha, dropout=0.0, target_modules=LORA_TARGETS.split(",")),
        optim=OptimConfig(lr=args.lr, warmup_steps=0, warmup_ratio=0.0, schedule="linear"),
        samples=SampleConfig(every_n_steps=0),
    )
    data = DemonstrationsDataModule(
        train_files=args.data, val_fraction=0.0, max_length=args.max_length, batch_size=args.batch_size, shuffle=False
    )
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
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
        "step_times_s": timer.times,
        "median_step_s": statistics.median(timer.times),
        "tokens_per_s": sum(timer.tokens) / sum(timer.times),
        "mean_real_tokens_per_batch": sum(timer.tokens) / len(timer.tokens),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": trainable,
    }


def worker_command(framework: str, args: argparse.Namespace, model_dir: str, out: Path) -> list[str]:
    common = [
        "--data",
        args.data,
        "--batch-size",
        str(args.batch_size),
        "--max-length",
        str(args.max_length),
        "--steps",
        str(args.steps),
        "--warmup-steps",
        str(args.warmup_steps),
        "--lora-r",
        str(args.lora_r),
        "--lora-alpha",
        str(args.lora_alpha),
        "--lr",
        str(args.lr),
        "--seed",
        str(args.seed),
    ]
    if framework == "trl":
        return [
            str(args.trl_python),
            str(HERE / "trl_sft_worker.py"),
            "--model",
            model_dir,
            *common,
            "--lora-targets",
            LORA_TARGETS,
            "--sampling",
            "sequential",
            "--json-out",
            str(out),
        ]
    return [sys.executable, __file__, "--worker", "--json-out", str(out), *common]


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
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--trl-python", type=Path, default=HERE / ".venv-trl" / "bin" / "python")
    p.add_argument("--out", type=Path, default=HERE / "results" / "sft_vs_trl.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        args.json_out.write_text(json.dumps(run_ours(args)))
        return
    if not args.trl_python.exists():
        sys.exit(f"no TRL environment at {args.trl_python}: run bash benchmarks/setup_trl_venv.sh first")

    from rlhf_lightning.models import embedded_model_dir

    model_dir = str(embedded_model_dir())
    work = Path(tempfile.mkdtemp(prefix="sft-bench-"))
    args.data = str(work / "demos.jsonl")
    write_prompt_completion_data(Path(args.data), args.rows)

    runs: dict[str, list[dict]] = {"rlhf_lightning": [], "trl": []}
    for i in range(args.repeats):
        for framework in ("rlhf_lightning", "trl"):
            out = work / f"{framework}-{i}.json"
            subprocess.run(worker_command(framework, args, model_dir, out), check=True, capture_output=True)
            result = json.loads(out.read_text())
            runs[framework].append(result)
            print(
                f"run {i + 1}/{args.repeats} {framework:15s} {result['tokens_per_s']:8.1f} tok/s  "
                f"median step {result['median_step_s']:.2f} s  peak RSS {result['peak_rss_mb']:.0f} MB",
                flush=True,
            )

    summary = {}
    for framework, results in runs.items():
        summary[framework] = {
            "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
            "median_step_s": statistics.median(r["median_step_s"] for r in results),
            "median_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
            "mean_real_tokens_per_batch": statistics.mean(r["mean_real_tokens_per_batch"] for r in results),
            "trainable_params": results[0]["trainable_params"],
        }
    ours, trl = summary["rlhf_lightning"], summary["trl"]
    ratios = {
        "tokens_per_s": ours["median_tokens_per_s"] / trl["median_tokens_per_s"],
        "peak_rss": ours["median_peak_rss_mb"] / trl["median_peak_rss_mb"],
    }
    print("\n| framework | tokens/s (median) | step s (median) | peak RSS MB | real tokens/batch | trainable |")
    print("|---|---|---|---|---|---|")
    for framework, s in summary.items():
        print(
            f"| {framework} | {s['median_tokens_per_s']:.1f} | {s['median_step_s']:.2f} | "
            f"{s['median_peak_rss_mb']:.0f} | {s['mean_real_tokens_per_batch']:.0f} | {s['trainable_params']:,} |"
        )
    print(f"\nrlhf_lightning / TRL: tokens/s x{ratios['tokens_per_s']:.2f}, peak RSS x{ratios['peak_rss']:.2f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "json_out", "data", "trl_python", "out")}
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "LoRA SFT on SmolLM2-135M-Instruct, float32",
                "device": f"CPU: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
                "command": "python benchmarks/sft_vs_trl.py " + " ".join(sys.argv[1:]),
                "settings": {**settings, "lora_targets": LORA_TARGETS},
                "summary": summary,
                "ratio_ours_over_trl": ratios,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
