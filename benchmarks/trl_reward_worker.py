#!/usr/bin/env python
"""TRL baseline for the LoRA reward-model throughput / accuracy benchmark.

Runs inside the separate TRL virtual environment made by ``benchmarks/setup_trl_venv.sh``
(it must not import ``rlhf_lightning``). It trains a reward model -- a local Hugging Face causal LM
loaded as ``AutoModelForSequenceClassification`` with ``num_labels=1`` -- with ``trl.RewardTrainer`` +
``RewardConfig`` + a peft ``LoraConfig`` (task_type SEQ_CLS, so the ``score`` head is trained in full
through peft's ``modules_to_save``) on CPU in float32. It measures the wall time of each optimizer
step and the number of real (non-padding) tokens per step, then scores a held-out preference file
with the trained model and reports the pairwise accuracy.

Example::

    benchmarks/.venv-trl/bin/python benchmarks/trl_reward_worker.py \
        --model /path/to/hf_model_dir --train train.jsonl --eval eval.jsonl \
        --steps 10 --train-steps 100 --json-out trl_rm.json

Data: jsonl rows ``{"prompt": str, "chosen": str, "rejected": str}`` (TRL's standard preference format
with an explicit prompt). What TRL 1.16 does with them (``RewardTrainer._prepare_dataset``):

* appends ``tokenizer.eos_token`` as *text* to ``chosen`` and ``rejected`` unless they already end
  with it (standard, i.e. non-conversational, rows only);
* tokenizes ``prompt + chosen`` and ``prompt + rejected`` as single strings (plain ``tokenizer(text=...)``,
  so special tokens such as BOS are added only if the tokenizer adds them by itself);
* **drops** (does not truncate) every pair whose chosen *or* rejected sequence is longer than
  ``max_length`` tokens;
* the collator puts the ``B`` chosen and the ``B`` rejected sequences into ONE right-padded batch of
  ``2B`` rows (chosen first), so one forward/backward per step sees both;
* the model reads the score at the rightmost token that is not ``pad_token_id`` (the appended EOS when
  pad != eos), and the loss is ``-logsigmoid(r_chosen - r_rejected).mean()``.

What is timed: ``on_step_begin`` -> ``on_step_end`` of ``transformers.Trainer``, i.e. forward (chosen and
rejected together) + backward + grad clipping + optimizer step + LR-scheduler step + zero_grad of one
optimizer step (gradient_accumulation_steps=1). Batch fetching/collation happens before
``on_step_begin`` and is not timed; logging is off. The held-out evaluation is timed separately.
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
    p.add_argument("--train", required=True, help='jsonl with rows {"prompt": str, "chosen": str, "rejected": str}')
    p.add_argument("--eval", required=True, help="held-out jsonl in the same format, scored after training")
    p.add_argument("--batch-size", type=int, default=8, help="preference pairs per batch (2x sequences)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="measured optimizer steps")
    p.add_argument("--warmup-steps", type=int, default=2, help="optimizer steps run first and not measured")
    p.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="total optimizer steps before the held-out evaluation (default: warmup + steps); "
        "training continues past the measured window up to this number",
    )
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument(
        "--lora-targets",
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        help="comma-separated module names to wrap with LoRA",
    )
    p.add_argument("--lr", type=float, default=1e-4)
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
    if args.train_steps is None:
        args.train_steps = args.warmup_steps + args.steps
    if args.train_steps < args.warmup_steps + args.steps:
        p.error("--train-steps must be >= --warmup-steps + --steps")
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
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    try:  # silences the expected "score.weight missing / lm_head.weight unexpected" load report
        from trl.trainer.reward_trainer import suppress_seqcls_warning
    except ImportError:  # pragma: no cover - older/newer trl
        suppress_seqcls_warning = contextlib.nullcontext

    transformers.logging.set_verbosity_error()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()

    if "rlhf_lightning" in sys.modules:  # pragma: no cover - guard, the baseline must be independent
        raise RuntimeError("trl_reward_worker must not import rlhf_lightning")

    targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    if not targets:
        raise SystemExit("--lora-targets is empty")
    if not os.path.isdir(args.model):
        raise SystemExit(f"--model must be a local folder, got {args.model!r}")

    # ---------------------------------------------------------------- model, data
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        raise SystemExit(
            "the tokenizer has no pad token; TRL would fall back to EOS as pad, which moves the score one token "
            "left of the appended EOS. Give the model folder a pad token distinct from EOS."
        )
    # The random score head is initialized at load time: seed first (TRL seeds only inside RewardTrainer.__init__).
    transformers.set_seed(args.seed)
    with suppress_seqcls_warning():
        model = AutoModelForSequenceClassification.from_pretrained(
            args.model, num_labels=1, dtype=torch.float32
        )  # dropout as in its config; RewardConfig.disable_dropout (default True) zeroes nn.Dropout modules
    config_pad_id = model.config.get_text_config().pad_token_id
    if config_pad_id is None:
        raise SystemExit(f"{args.model}/config.json has no pad_token_id (sequence classification needs it)")
    if config_pad_id != tokenizer.pad_token_id:
        raise SystemExit(
            f"config pad_token_id={config_pad_id} != tokenizer pad_token_id={tokenizer.pad_token_id} "
            f"({tokenizer.pad_token!r}); TRL would overwrite the config with the tokenizer's"
        )
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise SystemExit("pad_token_id == eos_token_id: the score would not be read at the appended EOS")

    columns = ["prompt", "chosen", "rejected"]

    def load_rows(path: str, flag: str):
        ds = datasets.load_dataset("json", data_files=path, split="train")
        missing = set(columns) - set(ds.column_names)
        if missing:
            raise SystemExit(f"{flag} rows need 'prompt', 'chosen' and 'rejected'; missing {sorted(missing)}")
        return ds.select_columns(columns)

    train_raw = load_rows(args.train, "--train")
    eval_raw = load_rows(args.eval, "--eval")

    # transformers >= 5.2x renamed `gradient_checkpointing` to `activation_checkpointing` (old name = deprecated
    # alias); TRL's RewardConfig still defaults the old name to True, so switch off whichever the config knows.
    rm_fields = {f.name for f in dataclasses.fields(RewardConfig)}
    checkpointing_off = {"gradient_checkpointing": False}
    if "activation_checkpointing" in rm_fields:
        checkpointing_off = {"activation_checkpointing": False}
    out_dir = tempfile.mkdtemp(prefix="trl_reward_worker_")
    config = RewardConfig(
        output_dir=out_dir,
        # --- what is benchmarked
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_steps=args.train_steps,
        learning_rate=args.lr,  # RewardConfig's default is 1e-4
        max_grad_norm=1.0,
        seed=args.seed,
        data_seed=args.seed,
        max_length=args.max_length,  # TRL drops (not truncates) pairs with a longer chosen or rejected
        center_rewards_coefficient=None,
        disable_dropout=True,  # RewardConfig's default: sets p=0 on every nn.Dropout (LoRA dropout included)
        **checkpointing_off,  # RewardConfig's default gradient_checkpointing is True
        # --- CPU, float32
        use_cpu=True,
        bf16=False,  # RewardConfig's default bf16=None means True unless fp16 is set
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
        task_type="SEQ_CLS",  # peft adds "score" (and "classifier") to modules_to_save
    )

    # ---------------------------------------------------------------- measurement
    class TokenCountingRewardTrainer(RewardTrainer):
        """Records the real tokens of every batch the model actually trains on (chosen + rejected rows)."""

        def training_step(self, model, inputs, *a, **kw):
            am = inputs.get("attention_mask")
            if am is None:
                raise RuntimeError("expected an attention_mask in the training inputs")
            # DataCollatorForPreference stacks the B chosen and the B rejected sequences into one (2B, L)
            # batch and builds attention_mask from the sequence lengths (ones, then 0 for padding).
            self._bench_real_tokens += int(am.sum().item())
            self._bench_padded_tokens += int(am.numel())
            self._bench_sequences += int(am.shape[0])
            return super().training_step(model, inputs, *a, **kw)

    class StepTimer(TrainerCallback):
        def __init__(self, trainer_ref: list, warmup: int, measured: int):
            self.trainer_ref = trainer_ref
            self.warmup = warmup
            self.measured = measured
            self.step_times: list[float] = []
            self.real_tokens: list[int] = []
            self.padded_tokens: list[int] = []
            self.sequences: list[int] = []
            self.train_step_times: list[float] = []  # every step, warm-up and past the window included
            self._t0 = None
            self._seen = 0

        def on_step_begin(self, args_, state, control, **kw):
            tr = self.trainer_ref[0]
            tr._bench_real_tokens = tr._bench_padded_tokens = tr._bench_sequences = 0
            self._t0 = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):
            dt = time.perf_counter() - self._t0
            tr = self.trainer_ref[0]
            self._seen += 1
            self.train_step_times.append(dt)
            if self.warmup < self._seen <= self.warmup + self.measured:
                self.step_times.append(dt)
                self.real_tokens.append(tr._bench_real_tokens)
                self.padded_tokens.append(tr._bench_padded_tokens)
                self.sequences.append(tr._bench_sequences)
                if self._seen == self.warmup + self.measured:
                    # peak RSS of the measured window (ru_maxrss is a high-water mark of the whole process)
                    self.peak_rss_mb_measured = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    trainer_ref: list = []
    timer = StepTimer(trainer_ref, args.warmup_steps, args.steps)
    trainer = TokenCountingRewardTrainer(
        model=model,
        args=config,
        train_dataset=train_raw,
        processing_class=tokenizer,
        peft_config=lora_config,
        callbacks=[timer],
    )
    trainer._bench_real_tokens = trainer._bench_padded_tokens = trainer._bench_sequences = 0
    trainer_ref.append(trainer)

    # ---------------------------------------------------------------- sanity checks
    pmodel = trainer.model
    base = pmodel.get_base_model()
    if base.config.get_text_config().pad_token_id != tokenizer.pad_token_id:
        raise RuntimeError("TRL changed the model's pad_token_id")
    lora_modules = {name: mod for name, mod in pmodel.named_modules() if isinstance(mod, LoraLayer)}
    wrapped = {name.rsplit(".", 1)[-1] for name in lora_modules}
    if wrapped != set(targets):
        raise RuntimeError(f"LoRA wraps {sorted(wrapped)}, requested {sorted(targets)}")
    effective_lora_dropout = set()
    for mod in lora_modules.values():
        for drop in mod.lora_dropout.values():
            effective_lora_dropout.add(drop.p if isinstance(drop, torch.nn.Dropout) else 0.0)
    # disable_dropout=True sets every nn.Dropout to p=0, LoRA dropout included: a --lora-dropout > 0 is ignored.
    if effective_lora_dropout != {0.0}:
        raise RuntimeError(f"LoRA dropout still active: {sorted(effective_lora_dropout)}")
    if args.lora_dropout > 0:
        print(
            f"[trl_reward_worker] WARNING: --lora-dropout {args.lora_dropout} zeroed by RewardConfig.disable_dropout",
            file=sys.stderr,
        )
    active_dropouts = [n for n, m in pmodel.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    attention_dropout = getattr(base.config.get_text_config(), "attention_dropout", 0.0) or 0.0

    trainable = [(n, p) for n, p in pmodel.named_parameters() if p.requires_grad]
    lora_trainable = [(n, p) for n, p in trainable if "lora_" in n]
    score_trainable = [(n, p) for n, p in trainable if ".score." in f".{n}" and "lora_" not in n]
    other = [n for n, _ in trainable if "lora_" not in n and ".score." not in f".{n}"]
    if other:
        raise RuntimeError(f"trainable parameters that are neither LoRA nor the score head: {other[:5]}")
    if not score_trainable:
        raise RuntimeError("the score head is not trainable (peft modules_to_save did not pick it up)")
    lora_params = sum(p.numel() for _, p in lora_trainable)
    score_params = sum(p.numel() for _, p in score_trainable)
    trainable_params = sum(p.numel() for _, p in trainable)
    if score_params != base.score.weight.numel() + (
        base.score.bias.numel() if getattr(base.score, "bias", None) is not None else 0
    ):
        raise RuntimeError(f"score head trainable params {score_params} != head size")
    print(
        f"[trl_reward_worker] trainable params: {trainable_params:,} = LoRA {lora_params:,} + score head "
        f"{score_params:,} ({[n for n, _ in score_trainable]})",
        file=sys.stderr,
    )
    if any(p.dtype != torch.float32 for p in pmodel.parameters()):
        raise RuntimeError("expected every parameter in float32")
    ckpt_attr = (
        "is_activation_checkpointing"
        if hasattr(type(base), "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    if getattr(base, ckpt_attr, False) or getattr(config, "gradient_checkpointing", False):
        raise RuntimeError("activation/gradient checkpointing is on")

    # What TRL did to the training rows.
    train_ds = trainer.train_dataset
    train_rows_total = len(train_raw)
    train_rows_used = len(train_ds)
    if train_rows_used < args.batch_size:
        raise SystemExit(f"only {train_rows_used} train rows left after TRL's max_length filter")
    eos_id = tokenizer.eos_token_id
    eos_appended = all(r["chosen_ids"][-1] == eos_id and r["rejected_ids"][-1] == eos_id for r in train_ds)
    # Reproduce TRL's tokenization independently: tokenizer(prompt + text + eos) for every kept row.
    n_check = min(len(train_raw), 256)
    expected = []
    eos_text = tokenizer.eos_token

    def with_eos(text: str) -> str:
        return text if text.endswith(eos_text) else text + eos_text

    for row in train_raw.select(range(n_check)):
        c = tokenizer(text=row["prompt"] + with_eos(row["chosen"]))["input_ids"]
        r = tokenizer(text=row["prompt"] + with_eos(row["rejected"]))["input_ids"]
        if len(c) <= args.max_length and len(r) <= args.max_length:
            expected.append((c, r))
    got = [(r["chosen_ids"], r["rejected_ids"]) for r in train_ds.select(range(min(len(expected), len(train_ds))))]
    tokenization_matches = expected[: len(got)] == got
    if not tokenization_matches:
        raise RuntimeError("TRL's tokenization differs from tokenizer(prompt + completion + eos)")
    bos_prepended = bool(tokenizer.bos_token_id is not None and train_ds[0]["chosen_ids"][0] == tokenizer.bos_token_id)
    chosen_lens = [len(x) for x in train_ds["chosen_ids"]]
    rejected_lens = [len(x) for x in train_ds["rejected_ids"]]

    # ---------------------------------------------------------------- run
    # Trainer prints a summary dict at the end of training; keep stdout for the JSON only.
    t_train = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
    train_wall_s = time.perf_counter() - t_train
    if len(timer.step_times) != args.steps:
        raise RuntimeError(f"measured {len(timer.step_times)} steps, expected {args.steps}")
    if trainer.state.global_step != args.train_steps:
        raise RuntimeError(f"trained {trainer.state.global_step} steps, expected {args.train_steps}")
    peak_rss_train_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # ---------------------------------------------------------------- held-out accuracy
    # Same preprocessing as training (TRL's own _prepare_dataset: EOS appended, prompt + completion tokenized as
    # one string, pairs longer than max_length dropped), same collator (chosen and rejected in one batch), the
    # model in eval mode, no grad.
    t_eval = time.perf_counter()
    eval_ds = trainer._prepare_dataset(eval_raw, tokenizer, config, "eval")
    pmodel.eval()
    chosen_scores: list[float] = []
    rejected_scores: list[float] = []
    collator = trainer.data_collator
    ebs = args.batch_size
    with torch.no_grad():
        for i in range(0, len(eval_ds), ebs):
            rows = [eval_ds[j] for j in range(i, min(i + ebs, len(eval_ds)))]
            batch = collator([{"chosen_ids": r["chosen_ids"], "rejected_ids": r["rejected_ids"]} for r in rows])
            out = pmodel(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            rc, rr = torch.chunk(out.logits.squeeze(-1).float(), chunks=2)
            chosen_scores += rc.tolist()
            rejected_scores += rr.tolist()
    eval_s = time.perf_counter() - t_eval
    n_pairs = len(chosen_scores)
    if n_pairs == 0:
        raise SystemExit("no held-out pairs left after TRL's max_length filter")
    wins = sum(c > r for c, r in zip(chosen_scores, rejected_scores))
    ties = sum(c == r for c, r in zip(chosen_scores, rejected_scores))

    total_time = sum(timer.step_times)
    total_tokens = sum(timer.real_tokens)
    result = {
        "framework": "trl",
        "task": "reward",
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
        "train": os.path.abspath(args.train),
        "eval": os.path.abspath(args.eval),
        "batch_size": args.batch_size,
        "sequences_per_batch": 2 * args.batch_size,
        "max_length": args.max_length,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "train_steps": args.train_steps,
        "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout, "targets": targets},
        "lora_dropout_effective": max(effective_lora_dropout),
        "lr": args.lr,
        "lr_scheduler": str(config.lr_scheduler_type),
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "seed": args.seed,
        "sampling": args.sampling,
        "optimizer": str(config.optim),
        "torch_num_threads": torch.get_num_threads(),
        "step_times_s": timer.step_times,
        "median_step_s": statistics.median(timer.step_times),
        "mean_step_s": total_time / len(timer.step_times),
        "tokens_per_s": total_tokens / total_time if total_time > 0 else None,
        "pairs_per_s": args.batch_size * len(timer.step_times) / total_time if total_time > 0 else None,
        "mean_real_tokens_per_batch": total_tokens / len(timer.real_tokens),
        "mean_padded_tokens_per_batch": sum(timer.padded_tokens) / len(timer.padded_tokens),
        "real_tokens_per_step": timer.real_tokens,
        "sequences_per_step": timer.sequences,
        "train_wall_s": train_wall_s,
        "mean_train_step_s_all": sum(timer.train_step_times) / len(timer.train_step_times),
        "trainable_params": trainable_params,
        "trainable_lora_params": lora_params,
        "trainable_score_params": score_params,
        "peak_rss_mb": getattr(timer, "peak_rss_mb_measured", peak_rss_train_mb),
        "peak_rss_mb_after_training": peak_rss_train_mb,
        "peak_rss_mb_after_eval": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # data handling by TRL
        "train_rows_total": train_rows_total,
        "train_rows_used": train_rows_used,
        "train_rows_dropped_over_max_length": train_rows_total - train_rows_used,
        "train_epochs": args.train_steps * args.batch_size / train_rows_used,
        "mean_chosen_len": sum(chosen_lens) / len(chosen_lens),
        "mean_rejected_len": sum(rejected_lens) / len(rejected_lens),
        "eos_appended": eos_appended,
        "bos_prepended": bos_prepended,
        "tokenization": "tokenizer(prompt + completion + eos_token) as one string; pairs > max_length dropped",
        "score_read_at": "rightmost token != pad_token_id (the appended EOS)",
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": eos_id,
        "chosen_and_rejected_in_one_forward": all(s == 2 * args.batch_size for s in timer.sequences),
        "disable_dropout": config.disable_dropout,
        "active_dropout_modules": len(active_dropouts),
        "attention_dropout": attention_dropout,
        # held-out accuracy
        "heldout_rows_total": len(eval_raw),
        "heldout_pairs": n_pairs,
        "heldout_accuracy": wins / n_pairs,
        "heldout_ties": ties,
        "heldout_mean_chosen_score": sum(chosen_scores) / n_pairs,
        "heldout_mean_rejected_score": sum(rejected_scores) / n_pairs,
        "heldout_mean_margin": (sum(chosen_scores) - sum(rejected_scores)) / n_pairs,
        "eval_s": eval_s,
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
