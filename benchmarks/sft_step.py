"""Seconds, tokens/s and peak memory of SFT steps (LoRA, optionally on a 4-bit base) on a real or synthetic model.

    python benchmarks/sft_step.py                                          # embedded model on CPU
    python benchmarks/sft_step.py --model synthetic-8b --vocab 32000 --quantization nf4 --dtype bfloat16 \\
        --batch 8 --seq-len 1024 --gradient-checkpointing                  # the 8B-shaped step of benchmarks/gpu.sh

The loss is on the second half of every sequence (the "response"). Synthetic models are those of
``ppo_iteration.py``. One warm-up step, then ``--steps`` measured; the table and ``--out`` (JSON) give the
median step, real tokens per second and the peak memory (CUDA allocator peak on a GPU, RSS on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    from ppo_iteration import add_model_arguments, model_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="measured steps (after one warm-up)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "sft_step.json")
    args = parser.parse_args()

    import lightning as L
    from torch.utils.data import DataLoader

    from rlhf_lightning.callbacks.samples import SampleConfig
    from rlhf_lightning.callbacks.throughput import peak_memory_gb
    from rlhf_lightning.models import LoraConfig, ModelConfig
    from rlhf_lightning.modules import SFTModule

    base = model_path(args)
    module = SFTModule(
        model=ModelConfig(name_or_path=base, dtype=args.dtype, quantization=args.quantization,
                          gradient_checkpointing=args.gradient_checkpointing),
        lora=LoraConfig(r=16, alpha=32), samples=SampleConfig(every_n_steps=0),
    )  # fmt: skip
    vocab = len(module.tokenizer)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(8, min(vocab, 30000), (args.batch * (args.steps + 1), args.seq_len), generator=generator)
    loss_mask = torch.zeros_like(ids)
    loss_mask[:, args.seq_len // 2 :] = 1
    rows = [{"input_ids": i, "attention_mask": torch.ones_like(i), "loss_mask": m} for i, m in zip(ids, loss_mask)]
    times: list[float] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

    trainer = L.Trainer(
        accelerator="gpu" if torch.cuda.is_available() else "cpu", devices=1, max_steps=args.steps + 1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[Timer()], default_root_dir=tempfile.mkdtemp(prefix="sft-bench-"),
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(rows, batch_size=args.batch))
    measured = times[1:]
    step = statistics.median(measured)
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available()
        else f"CPU ({platform.machine()}, {os.cpu_count()} cores)",
        "model": args.model, "vocab": module.model.config.vocab_size, "dtype": args.dtype,
        "quantization": args.quantization,
        "gradient_checkpointing": args.gradient_checkpointing, "batch": args.batch, "seq_len": args.seq_len,
        "measured_steps": len(measured), "median_step_s": step, "tokens_per_s": args.batch * args.seq_len / step,
        "peak_memory_gb": peak_memory_gb(module.device),
    }  # fmt: skip
    print(f"\nSFT step on {result['device']}: {args.model} (vocab {result['vocab']}, {args.dtype}, "
          f"{args.quantization}), "
          f"batch {args.batch} x {args.seq_len}: {step:.2f} s, {result['tokens_per_s']:.0f} tokens/s, "
          f"peak {result['peak_memory_gb']:.2f} GB")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
