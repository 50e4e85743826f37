#!/usr/bin/env python
"""TRL baseline for the LoRA-SFT throughput benchmark.

Runs inside the separate TRL virtual environment made by ``benchmarks/setup_trl_venv.sh``
(it must not import ``rlhf_lightning``). It trains a local Hugging Face causal LM with
``trl.SFTTrainer`` + ``SFTConfig`` + a peft ``LoraConfig`` on CPU in float32 and measures
the wall time of each optimizer step and the number of real (non-padding) tokens per step.

Example::

    benchmarks/.venv-trl/bin/python benchmarks/trl_sft_worker.py \
        --model /path/to/hf_model_dir --data train.jsonl --steps 10 --json-out trl.json

Data: jsonl rows ``{"prompt": str, "completion": str}`` (TRL's standard prompt-completion
format; TRL appends the EOS token to each completion and, by default for this format,
computes the loss on completion tokens only).

What is timed: ``on_step_begin`` -> ``on_step_end`` of ``transformers.Trainer``, i.e.
forward + backward + grad clipping + optimizer step + LR-scheduler step + zero_grad of one
optimizer step (gradient_accumulation_steps=1). Batch fetching/collation happens in the
Trainer loop *before* ``on_step_begin`` and is not timed; logging happens after
``on_step_end`` and is not timed either.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from importlib.metadata import version as pkg_version


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="local HF causal-LM folder (config, safetensors, tokenizer)")
    p.add_argument("--data", required=True, help='jsonl with rows {"prompt": str, "completion": str}')
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="measured optimizer steps")
    p.add_argument("--warmup-steps", type=int, default=2, help="optimizer steps run first and not measured")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument(
        "--lora-targets",
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        help="comma-separated module names to wrap with LoRA",
    )
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sampling",
        choices=["random", "sequential"],
        default="random",
        help="order in which the Trainer draws rows (random: seeded shuffle, Trainer's default)",
    )
    p.add_argument("--json-out", default=None, help="write the result JSON here (it is also printed to stdout)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup_steps < 0 or args.batch_size < 1:
        p.error("--steps must be >= 1, --warmup-steps >= 0, --batch-size >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)

    # Keep the libraries quiet before importing them.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

    import warnings

    # transformers 5.2x deprecation notices (gradient_checkpointing -> activation_checkpointing) read by peft/trl.
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.*")

    import datasets
    import peft
    import torch
    import transformers
    import trl
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    transformers.logging.set_verbosity_error()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()

    if "rlhf_lightning" in sys.modules:  # pragma: no cover - guard, the baseline must be independent
        raise RuntimeError("trl_sft_worker must not import rlhf_lightning")

    targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    if not targets:
        raise SystemExit("--lora-targets is empty")
    if not os.path.isdir(args.model):
        raise SystemExit(f"--model must be a local folder, got {args.model!r}")

    # ---------------------------------------------------------------- model, data
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)  # dropout as in its config

    dataset = datasets.load_dataset("json", data_files=args.data, split="train")
    missing = {"prompt", "completion"} - set(dataset.column_names)
    if missing:
        raise SystemExit(f"--data rows need 'prompt' and 'completion'; missing {sorted(missing)}")
    dataset = dataset.select_columns(["prompt", "completion"])

    total_steps = args.warmup_steps + args.steps
    # transformers >= 5.2x renamed `gradient_checkpointing` to `activation_checkpointing` (old name = deprecated
    # alias); TRL's SFTConfig still defaults the old name to True, so switch off whichever the config knows.
    sft_fields = {f.name for f in dataclasses.fields(SFTConfig)}
    checkpointing_off = {"gradient_checkpointing": False}
    if "activation_checkpointing" in sft_fields:
        checkpointing_off = {"activation_checkpointing": False}
    out_dir = tempfile.mkdtemp(prefix="trl_sft_worker_")
    config = SFTConfig(
        output_dir=out_dir,
        # --- what is benchmarked
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_steps=total_steps,
        learning_rate=args.lr,  # SFTConfig's default is 2e-5
        seed=args.seed,
        data_seed=args.seed,
        max_length=args.max_length,  # trl >= 0.20: `max_length`, not `max_seq_length`
        truncation_mode="keep_start",
        packing=False,
        padding_free=False,
        completion_only_loss=None,  # None = auto: True for prompt-completion rows (checked below)
        assistant_only_loss=False,
        **checkpointing_off,  # SFTConfig's default gradient_checkpointing is True
        # --- CPU, float32
        use_cpu=True,
        bf16=False,  # SFTConfig's default bf16=None means True unless fp16 is set
        fp16=False,
        # --- data loading
        dataloader_num_workers=0,
        dataloader_drop_last=True,  # every measured step sees a full batch
        train_sampling_strategy=args.sampling,
        # --- nothing else
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        log_level="error",
    )

    lora_config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )

    # ---------------------------------------------------------------- measurement
    class TokenCountingSFTTrainer(SFTTrainer):
        """Records the real tokens of every micro-batch the model actually trains on."""

        def training_step(self, model, inputs, *a, **kw):
            am = inputs.get("attention_mask")
            if am is None:  # only with padding_free, which is off here
                raise RuntimeError("expected an attention_mask in the training inputs")
            # TRL's collator builds attention_mask from the sequence lengths (ones, then 0 for padding),
            # so its sum is the number of real tokens even when pad_token == eos_token.
            self._bench_real_tokens += int(am.sum().item())
            self._bench_padded_tokens += int(am.numel())
            self._bench_loss_tokens += int((inputs["labels"] != -100).sum().item())
            return super().training_step(model, inputs, *a, **kw)

    class StepTimer(TrainerCallback):
        def __init__(self, trainer_ref: list, warmup: int):
            self.trainer_ref = trainer_ref
            self.warmup = warmup
            self.step_times: list[float] = []
            self.real_tokens: list[int] = []
            self.padded_tokens: list[int] = []
            self.loss_tokens: list[int] = []
            self._t0 = None
            self._seen = 0

        def on_step_begin(self, args_, state, control, **kw):
            tr = self.trainer_ref[0]
            tr._bench_real_tokens = tr._bench_padded_tokens = tr._bench_loss_tokens = 0
            self._t0 = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):
            dt = time.perf_counter() - self._t0
            tr = self.trainer_ref[0]
            self._seen += 1
            if self._seen > self.warmup:
                self.step_times.append(dt)
                self.real_tokens.append(tr._bench_real_tokens)
                self.padded_tokens.append(tr._bench_padded_tokens)
                self.loss_tokens.append(tr._bench_loss_tokens)

    trainer_ref: list = []
    timer = StepTimer(trainer_ref, args.warmup_steps)
    trainer = TokenCountingSFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config,
        callbacks=[timer],
    )
    trainer._bench_real_tokens = trainer._bench_padded_tokens = trainer._bench_loss_tokens = 0
    trainer_ref.append(trainer)

    # ---------------------------------------------------------------- sanity checks
    if not trainer.completion_only_loss:
        raise RuntimeError("TRL did not enable completion-only loss for prompt-completion data")
    pmodel = trainer.model
    lora_modules = {name: mod for name, mod in pmodel.named_modules() if isinstance(mod, LoraLayer)}
    wrapped = {name.rsplit(".", 1)[-1] for name in lora_modules}
    if wrapped != set(targets):
        raise RuntimeError(f"LoRA wraps {sorted(wrapped)}, requested {sorted(targets)}")
    for name, mod in lora_modules.items():
        for drop in mod.lora_dropout.values():
            p_eff = drop.p if isinstance(drop, torch.nn.Dropout) else 0.0
            if abs(p_eff - args.lora_dropout) > 1e-12:
                raise RuntimeError(f"{name}: LoRA dropout {p_eff} != {args.lora_dropout}")
    trainable = [(n, p) for n, p in pmodel.named_parameters() if p.requires_grad]
    not_lora = [n for n, _ in trainable if "lora_" not in n]
    if not_lora:
        raise RuntimeError(f"non-LoRA trainable parameters: {not_lora[:5]}")
    trainable_params = sum(p.numel() for _, p in trainable)
    if any(p.dtype != torch.float32 for p in pmodel.parameters()):
        raise RuntimeError("expected every parameter in float32")
    base = pmodel.get_base_model()
    ckpt_attr = (
        "is_activation_checkpointing"
        if hasattr(type(base), "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    if getattr(base, ckpt_attr, False) or getattr(config, "gradient_checkpointing", False):
        raise RuntimeError("activation/gradient checkpointing is on")

    # ---------------------------------------------------------------- run
    # Trainer prints a summary dict at the end of training; keep stdout for the JSON only.
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
    if len(timer.step_times) != args.steps:
        raise RuntimeError(f"measured {len(timer.step_times)} steps, expected {args.steps}")

    total_time = sum(timer.step_times)
    total_tokens = sum(timer.real_tokens)
    result = {
        "framework": "trl",
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "torch": torch.__version__,
            "datasets": datasets.__version__,
            "accelerate": pkg_version("accelerate"),
        },
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "peft_version": peft.__version__,
        "torch_version": torch.__version__,
        "model": os.path.abspath(args.model),
        "data": os.path.abspath(args.data),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout, "targets": targets},
        "lr": args.lr,
        "seed": args.seed,
        "sampling": args.sampling,
        "optimizer": str(config.optim),
        "torch_num_threads": torch.get_num_threads(),
        "step_times_s": timer.step_times,
        "median_step_s": statistics.median(timer.step_times),
        "mean_step_s": total_time / len(timer.step_times),
        "tokens_per_s": total_tokens / total_time if total_time > 0 else None,
        "mean_real_tokens_per_batch": total_tokens / len(timer.real_tokens),
        "mean_padded_tokens_per_batch": sum(timer.padded_tokens) / len(timer.padded_tokens),
        "mean_loss_tokens_per_batch": sum(timer.loss_tokens) / len(timer.loss_tokens),
        "real_tokens_per_step": timer.real_tokens,
        "trainable_params": trainable_params,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    text = json.dumps(result, indent=2)
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            f.write(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
