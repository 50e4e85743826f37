#!/usr/bin/env python
"""TRL baseline for the PPO iteration benchmark (``benchmarks/ppo_vs_trl.py``).

Runs inside the separate environment made by ``bash benchmarks/setup_trl_venv.sh --ppo`` (trl 1.12.0, the
last release with a PPO trainer, on transformers 4.57) and must not import ``rlhf_lightning``. It runs
``trl.experimental.ppo.PPOTrainer`` as its documentation sets it up with LoRA: the policy is the SFT model
with a fresh peft LoRA adapter, the reference is the same model with the adapter disabled, and the reward
model and the value model are two full ``AutoModelForSequenceClassification`` copies of the reward model
(the value model trains in full).

The spec file (JSON, written by ``ppo_vs_trl.py``) names the merged SFT and reward model folders, the prompt
batches as token ids, and every PPO setting. Prompts are fed in the spec's order, each batch left-padded to
its longest prompt (TRL's own dataloader would shuffle).

Per iteration (one rollout batch) it records: rollout = ``batch_generation`` (sampling, with the logits TRL
keeps for the old log-probs); scoring = from there to the first training forward (the reference, value and
reward passes, rewards, GAE); training = from there to ``on_step_end`` (every PPO epoch and minibatch, and
TRL's own statistics); and the real (non-pad) prompt and response tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True)
    p.add_argument("--json-out", required=True)
    args = p.parse_args()
    spec = json.loads(open(args.spec).read())

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import warnings

    warnings.filterwarnings("ignore")

    import datasets
    import torch
    import transformers
    import trl
    from peft import LoraConfig
    from torch.utils.data import DataLoader
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_module

    if "rlhf_lightning" in sys.modules:  # pragma: no cover - the baseline must be independent
        raise RuntimeError("trl_ppo_worker must not import rlhf_lightning")
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.manual_seed(spec["seed"])

    tokenizer = AutoTokenizer.from_pretrained(spec["sft_model"], padding_side="left")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise SystemExit("the tokenizer needs a pad token distinct from EOS (TRL masks by pad id)")
    policy = AutoModelForCausalLM.from_pretrained(spec["sft_model"], dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1, dtype=torch.float32)
    rope = getattr(policy.config, "rope_theta", None)
    if rope != spec["rope_theta"]:
        raise SystemExit(f"rope_theta {rope} read from {spec['sft_model']}, expected {spec['rope_theta']}")

    batches = spec["prompt_batches"]
    dataset = datasets.Dataset.from_dict({"input_ids": [ids for batch in batches for ids in batch]})
    batch_size = spec["batch"]
    out_dir = spec["work"] + "/trl-out"
    config = PPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        local_rollout_forward_batch_size=batch_size,
        num_mini_batches=spec["num_minibatches"],
        num_ppo_epochs=spec["ppo_epochs"],
        total_episodes=batch_size * len(batches),
        response_length=spec["response_length"],
        temperature=spec["temperature"],
        stop_token="eos",
        missing_eos_penalty=spec["missing_eos_penalty"],
        kl_coef=spec["kl_coef"],
        vf_coef=spec["vf_coef"],
        cliprange=spec["clip_eps"],
        cliprange_value=spec["value_clip"],
        gamma=spec["gamma"],
        lam=spec["lam"],
        learning_rate=spec["lr"],
        lr_scheduler_type="linear",
        warmup_steps=0,
        max_grad_norm=spec["max_grad_norm"],
        num_sample_generations=0,
        seed=spec["seed"],
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
    )
    peft_config = LoraConfig(
        r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0,
        target_modules=spec["lora_targets"].split(","), task_type="CAUSAL_LM",
    )  # fmt: skip

    iterations: list[dict] = []
    current: dict = {}
    clock = {"iteration_start": 0.0}

    real_batch_generation = ppo_module.batch_generation
    real_forward = ppo_module.forward
    real_truncate = ppo_module.truncate_response

    def timed_batch_generation(model, queries, *a, **kw):
        current.clear()
        current["prompt_tokens"] = int((queries != tokenizer.pad_token_id).sum())
        start = time.perf_counter()
        out = real_batch_generation(model, queries, *a, **kw)
        current["rollout_s"] = time.perf_counter() - start
        current["rollout_end"] = time.perf_counter()
        return out

    def timed_forward(model, *a, **kw):
        if hasattr(model, "critic_backbone") and "training_start" not in current:  # PolicyAndValueWrapper
            current["training_start"] = time.perf_counter()
            current["scoring_s"] = current["training_start"] - current["rollout_end"]
        return real_forward(model, *a, **kw)

    def counted_truncate(stop_token_id, pad_token_id, responses):
        out = real_truncate(stop_token_id, pad_token_id, responses)
        current["response_tokens"] = current.get("response_tokens", 0) + int((out != pad_token_id).sum())
        current["ended"] = current.get("ended", 0) + int((out == stop_token_id).any(-1).sum())
        return out

    ppo_module.batch_generation = timed_batch_generation
    ppo_module.forward = timed_forward
    ppo_module.truncate_response = counted_truncate

    class IterationEnd(TrainerCallback):
        def on_train_begin(self, args_, state, control, **kw):
            clock["iteration_start"] = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):
            now = time.perf_counter()
            record = {
                "iteration_s": now - clock["iteration_start"],
                "rollout_s": current["rollout_s"],
                "scoring_s": current["scoring_s"],
                "training_s": now - current["training_start"],
                "prompt_tokens": current["prompt_tokens"],
                "response_tokens": current["response_tokens"],
                "ended": current.get("ended", 0),
            }
            iterations.append(record)
            clock["iteration_start"] = now

        def on_log(self, args_, state, control, logs=None, **kw):
            if logs and iterations and "objective/kl" in logs:
                iterations[-1]["kl"] = logs["objective/kl"]
                iterations[-1]["scores"] = logs["objective/scores"]

    trainer = PPOTrainer(
        args=config, processing_class=tokenizer, model=policy, ref_model=None, reward_model=reward,
        train_dataset=dataset, value_model=value, peft_config=peft_config, callbacks=[IterationEnd()],
    )  # fmt: skip
    # the spec's batches in the spec's order (TRL's own loader shuffles)
    trainer.dataloader = trainer.accelerator.prepare(
        DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=DataCollatorWithPadding(tokenizer))
    )
    trainer.train()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    result = {
        "framework": "trl",
        "versions": {name: __import__(name).__version__ for name in ("trl", "transformers", "torch", "peft")},
        "iterations": iterations,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": trainable,
        "threads": torch.get_num_threads(),
    }
    del trl
    with open(args.json_out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
