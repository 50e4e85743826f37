"""Seconds, tokens/s and peak memory of one PPO iteration, split into rollout / scoring / training.

All four roles share one base model: the policy and reference adapters (an "SFT" adapter), the reward
adapter with its score head and the value adapter start from random LoRA weights written to a temporary
folder, so the run measures the real four-role iteration without needing trained stages. Random adapters
on a real model rarely emit EOS, so responses run to ``--response-len`` and the batch shape is the one
stated.

    python benchmarks/ppo_iteration.py                                    # embedded model on CPU
    python benchmarks/ppo_iteration.py --model synthetic-8b --vocab 32000 --quantization nf4 \\
        --dtype bfloat16 --batch 8 --prompt-len 512 --response-len 512 --gradient-checkpointing

``synthetic-8b`` is a randomly initialised Llama-architecture model of about 8B parameters (Llama 3.1 8B
shapes; ``--vocab`` sets its vocabulary), saved once under ``--cache``; ``synthetic-tiny`` is a small
one for trying the script. Results go to a table and to ``--out`` (JSON).
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
sys.path.insert(0, str(HERE.parent))

SYNTHETIC = {
    "synthetic-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8),
    "synthetic-tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2),
}  # fmt: skip


def synthetic_model(name: str, vocab: int, cache: Path) -> str:
    """A random-weight Llama of the named shape, saved as bfloat16 with a char-level tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_lightning.models.tiny import build_char_tokenizer

    folder = cache / f"{name}-v{vocab}"
    if (folder / "config.json").exists():
        return str(folder)
    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=False, rope_theta=500000.0,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"), eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **SYNTHETIC[name],
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return str(folder)


def random_run_folder(base: str, folder: Path, stage: str, std: float) -> str:
    """An adapter folder (and score head for a reward folder) with random LoRA weights."""
    from rlhf_lightning.models import LoraConfig, ModelConfig, load_causal_lm, load_tokenizer
    from rlhf_lightning.models.reward import ScalarHead, save_head
    from rlhf_lightning.models.run_folder import RunFolder, RunInfo

    model = load_causal_lm(ModelConfig(name_or_path=base, dtype="float32"), LoraConfig(r=16, alpha=32))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=std)
    model.save_pretrained(folder)
    load_tokenizer(base).save_pretrained(folder)
    if stage == "reward":
        save_head(ScalarHead(model.config.hidden_size), folder)
    RunFolder.write_info(folder, RunInfo(stage=stage, base_model=base, adapter=True))
    del model
    return str(folder)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that pick the model and how it is loaded (shared with ``sft_step.py``)."""
    parser.add_argument("--model", default="embedded", help="embedded, a model folder, or synthetic-8b/-tiny")
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary of a synthetic model")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "rlhf-bench-models")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--quantization", default="none", choices=["none", "nf4", "fp4", "int8"])
    parser.add_argument("--gradient-checkpointing", action="store_true")


def model_path(args: argparse.Namespace) -> str:
    """The model folder of ``--model`` (a synthetic one is written on first use)."""
    from rlhf_lightning.models import resolve_model_path

    base = synthetic_model(args.model, args.vocab, args.cache) if args.model in SYNTHETIC else args.model
    return resolve_model_path(base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--batch", type=int, default=8, help="prompts per iteration")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--response-len", type=int, default=32)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--num-minibatches", type=int, default=1)
    parser.add_argument("--micro-batch", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=3, help="measured iterations (after one warm-up)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ppo_iteration.json")
    args = parser.parse_args()

    import lightning as L
    from torch.utils.data import DataLoader

    from rlhf_lightning.models import GenerationConfig, LoraConfig, ModelConfig
    from rlhf_lightning.modules import PPOModule
    from rlhf_lightning.modules.ppo import PPOConfig, PPOEvalConfig

    base = model_path(args)
    work = Path(tempfile.mkdtemp(prefix="ppo-bench-"))
    sft = random_run_folder(base, work / "sft", "sft", std=0.3)
    reward = random_run_folder(base, work / "reward", "reward", std=0.3)

    module = PPOModule(
        model=ModelConfig(name_or_path=base, adapter=sft, dtype=args.dtype, quantization=args.quantization,
                          gradient_checkpointing=args.gradient_checkpointing),
        lora=LoraConfig(r=16, alpha=32),
        reward_model=reward,
        rollout=GenerationConfig(max_new_tokens=args.response_len),
        ppo=PPOConfig(ppo_epochs=args.ppo_epochs, num_minibatches=args.num_minibatches,
                      micro_batch_size=args.micro_batch),
        evaluation=PPOEvalConfig(at_end=False, samples_every_n_iterations=0),
    )  # fmt: skip
    vocab = len(module.tokenizer)
    generator = torch.Generator().manual_seed(0)
    # prompts of exactly --prompt-len tokens, avoiding special tokens (ids below 8 in every tokenizer here)
    ids = torch.randint(
        8, min(vocab, 30000), (args.batch * (args.iterations + 1), args.prompt_len), generator=generator
    )
    batches = [{"input_ids": row, "attention_mask": torch.ones_like(row)} for row in ids]
    loader = DataLoader(batches, batch_size=args.batch, shuffle=False)

    records: list[dict] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            records.append(dict(pl_module.last_stats))

    device = "gpu" if torch.cuda.is_available() else "cpu"
    trainer = L.Trainer(
        accelerator=device, devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
        default_root_dir=str(work / "run"),
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    total = time.perf_counter() - start
    measured = records[1:]
    keys = ("rollout", "scoring", "training")
    result = {
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.machine()}, {os.cpu_count()} cores)",
        "threads": torch.get_num_threads(),
        "model": args.model,
        "vocab": vocab,
        "parameters": sum(p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1) for p in module.parameters()),
        "dtype": args.dtype,
        "quantization": args.quantization,
        "gradient_checkpointing": args.gradient_checkpointing,
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "max_response_len": args.response_len,
        "ppo_epochs": args.ppo_epochs,
        "num_minibatches": args.num_minibatches,
        "micro_batch": args.micro_batch,
        "measured_iterations": len(measured),
        "mean_response_len": statistics.mean(r["rollout/response_length"] for r in measured),
        "median_iteration_s": statistics.median(sum(r[f"perf/{k}_sec"] for k in keys) for r in measured),
        "wall_s_including_load": total,
    }
    for k in keys:
        result[f"median_{k}_s"] = statistics.median(r[f"perf/{k}_sec"] for r in measured)
        result[f"peak_memory_gb_{k}"] = max(r[f"perf/peak_memory_gb_{k}"] for r in measured)
        result[f"median_{k}_tokens_per_s"] = statistics.median(r[f"perf/{k}_tokens_per_sec"] for r in measured)
    print(f"\nPPO iteration on {result['device']}: {args.model} ({result['parameters'] / 1e6:.0f}M parameters, "
          f"vocab {vocab}, {args.dtype}, quantization {args.quantization}), batch {args.batch} x "
          f"({args.prompt_len} prompt + {result['mean_response_len']:.0f} response tokens), "
          f"{args.ppo_epochs} epochs x {args.num_minibatches} minibatches")  # fmt: skip
    print(f"{'phase':10s} {'median s':>9s} {'tokens/s':>10s} {'peak GB':>8s}")
    for k in keys:
        print(f"{k:10s} {result[f'median_{k}_s']:9.2f} {result[f'median_{k}_tokens_per_s']:10.1f} "
              f"{result[f'peak_memory_gb_{k}']:8.2f}")  # fmt: skip
    print(f"{'iteration':10s} {result['median_iteration_s']:9.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
