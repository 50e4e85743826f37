"""One PPO iteration: rlhf_lightning vs TRL's PPOTrainer (trl 1.12.0, its last release with one), side by side.

Both start from the same trained stages on the embedded SmolLM2-135M-Instruct in float32 on CPU: an SFT
LoRA adapter and a reward LoRA adapter with a scalar head (random LoRA weights, written once per benchmark
run, so no earlier stage has to run; responses then rarely end early and both frameworks process full-length
responses). rlhf_lightning uses them as it does after its own stages: one base, the policy from the SFT
adapter, the reference the SFT adapter, the reward and the value as adapters from the reward run. TRL gets
them as its documentation asks: the SFT adapter merged into a full model (policy: a fresh LoRA adapter on it,
reference: the adapter disabled) and the reward adapter merged into two full sequence-classification models
(reward, and value, which trains in full).

Same settings for both: LoRA r 16, alpha 32, dropout 0 on the 7 linear projections; the shipped quickstart
prompts, chat-formatted, the same token ids in the same batches (each left-padded to its longest prompt);
batch 8, responses up to 48 tokens sampled at temperature 0.7 from the full distribution, 4 PPO epochs,
1 minibatch, lr 5e-5 linear, KL coefficient 0.05 (k1), missing-EOS penalty 1, clip 0.2, value clip 0.2,
vf_coef 0.1 (TRL's; ours has no value-loss weight, its value learning rate is lr), gamma 1, lambda 0.95,
gradient clipping 1.0. One warm-up iteration, then ``--iterations`` measured; each run is a fresh process and
the frameworks alternate.

    bash benchmarks/setup_trl_venv.sh --ppo                     # once: trl 1.12.0 in benchmarks/.venv-trl-ppo
    .venv/bin/python benchmarks/ppo_vs_trl.py --repeats 3       # ~15 minutes on 2 CPU cores
    .venv/bin/python benchmarks/ppo_vs_trl.py --only ours --repeats 1    # ours alone, to try a change

Prints the median seconds per iteration (rollout / scoring / training), real tokens per second (prompt and
response tokens of the batch per iteration second) and peak RSS of each, and the ratios; writes
``benchmarks/results/ppo_vs_trl.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import HERE, LORA_TARGETS, alternate, report

TRL_PPO_PYTHON = HERE / ".venv-trl-ppo" / "bin" / "python"
PHASES = ("rollout", "scoring", "training")


def settings(args: argparse.Namespace) -> dict:
    return {
        "batch": args.batch, "response_length": args.response_length, "temperature": 0.7,
        "ppo_epochs": args.ppo_epochs, "num_minibatches": args.num_minibatches, "lr": 5e-5, "kl_coef": 0.05,
        "vf_coef": 0.1, "clip_eps": 0.2, "value_clip": 0.2, "gamma": 1.0, "lam": 0.95, "max_grad_norm": 1.0,
        "missing_eos_penalty": 1.0, "lora_r": 16, "lora_alpha": 32, "lora_targets": LORA_TARGETS, "seed": args.seed,
    }  # fmt: skip


def prompt_batches(batch: int, count: int) -> list[list[list[int]]]:
    """``count`` batches of ``batch`` shipped quickstart prompts as chat-formatted token ids (unpadded)."""
    from rlhf_lightning.data.readers import read_rows
    from rlhf_lightning.models import load_tokenizer

    tokenizer = load_tokenizer("embedded")
    rows = [row for _, row in read_rows("builtin:prompts.jsonl")][: batch * count]
    if len(rows) < batch * count:
        sys.exit(f"only {len(rows)} shipped prompts: lower --batch or --iterations")
    texts = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    return [ids[i : i + batch] for i in range(0, len(ids), batch)]


def transformers4_config(folder: Path, **extra) -> None:
    """Make a folder saved by transformers 5 readable by transformers 4.57 (TRL's): the RoPE base is read from
    ``rope_theta`` there, and would silently default to 10000 otherwise; the tokenizer class is renamed."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["rope_theta"] = config["rope_parameters"]["rope_theta"]
    config["torch_dtype"] = "float32"
    config.update(extra)
    path.write_text(json.dumps(config, indent=2))
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 5's TokenizersBackend is unknown to 4.x
    path.write_text(json.dumps(config, indent=2))


def write_stages(work: Path) -> dict:
    """The SFT and reward run folders (random LoRA weights) and TRL's merged copies of them."""
    import torch
    from peft import PeftModel
    from ppo_iteration import random_run_folder
    from transformers import AutoModelForCausalLM, LlamaForSequenceClassification

    from rlhf_lightning.models import embedded_model_dir, load_tokenizer
    from rlhf_lightning.models.reward import load_head

    torch.manual_seed(0)
    base = str(embedded_model_dir())
    sft = random_run_folder(base, work / "sft", "sft", std=0.3)
    reward = random_run_folder(base, work / "reward", "reward", std=0.3)
    tokenizer = load_tokenizer(base)

    def merged(adapter: str):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        return PeftModel.from_pretrained(model, adapter).merge_and_unload()

    trl_sft = work / "trl-sft"
    merged(sft).save_pretrained(trl_sft)
    tokenizer.save_pretrained(trl_sft)
    transformers4_config(trl_sft)

    causal = merged(reward)
    head = load_head(reward, causal.config.hidden_size)
    if head.linear.bias.abs().max() > 0:  # TRL's Llama score head has no bias
        sys.exit("the benchmark's reward head must have a zero bias")
    config = causal.config
    config.num_labels = 1
    classifier = LlamaForSequenceClassification(config)
    classifier.model.load_state_dict(causal.model.state_dict())
    with torch.no_grad():
        classifier.score.weight.copy_(head.linear.weight)
    trl_reward = work / "trl-reward"
    classifier.save_pretrained(trl_reward)
    tokenizer.save_pretrained(trl_reward)
    transformers4_config(trl_reward, architectures=["LlamaForSequenceClassification"])
    return {
        "base": base, "sft": sft, "reward": reward, "sft_model": str(trl_sft), "reward_model": str(trl_reward),
        "rope_theta": config.rope_parameters["rope_theta"], "pad_token_id": tokenizer.pad_token_id,
    }  # fmt: skip


def summarize_iterations(iterations: list[dict], warmup: int) -> dict:
    """Medians over the measured iterations, in the fields ``side_by_side.report`` reads."""
    measured = iterations[warmup:]
    tokens = [r["prompt_tokens"] + r["response_tokens"] for r in measured]
    return {
        "median_step_s": statistics.median(r["iteration_s"] for r in measured),
        "tokens_per_s": sum(tokens) / sum(r["iteration_s"] for r in measured),
        "mean_real_tokens_per_batch": statistics.mean(tokens),
        **{f"{k}_s": statistics.median(r[f"{k}_s"] for r in measured) for k in PHASES},
        "mean_response_len": statistics.mean(r["response_tokens"] / r["batch"] for r in measured),
        "first_kl": iterations[0].get("kl"),
        "measured_iterations": len(measured),
    }


def run_ours(spec: dict) -> dict:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from rlhf_lightning.models import GenerationConfig, LoraConfig, ModelConfig, count_parameters
    from rlhf_lightning.modules import OptimConfig, PPOModule
    from rlhf_lightning.modules.ppo import PPOConfig, PPOEvalConfig, RewardShaping
    from rlhf_lightning.ops import left_pad

    torch.manual_seed(spec["seed"])
    module = PPOModule(
        model=ModelConfig(name_or_path=spec["base"], adapter=spec["sft"], dtype="float32"),
        lora=LoraConfig(r=spec["lora_r"], alpha=spec["lora_alpha"], dropout=0.0,
                        target_modules=spec["lora_targets"].split(",")),
        optim=OptimConfig(lr=spec["lr"], warmup_ratio=0.0, schedule="linear"),
        reward_model=spec["reward"],
        rollout=GenerationConfig(max_new_tokens=spec["response_length"], temperature=spec["temperature"]),
        ppo=PPOConfig(ppo_epochs=spec["ppo_epochs"], num_minibatches=spec["num_minibatches"],
                      clip_eps=spec["clip_eps"], value_clip=spec["value_clip"],
                      gamma=spec["gamma"], lam=spec["lam"], max_grad_norm=spec["max_grad_norm"]),
        rewards=RewardShaping(kl_coef=spec["kl_coef"], missing_eos_penalty=spec["missing_eos_penalty"]),
        evaluation=PPOEvalConfig(at_end=False, samples_every_n_iterations=0),
    )  # fmt: skip
    batches = []
    for prompts in spec["prompt_batches"]:
        ids, mask = left_pad(prompts, spec["pad_token_id"], "cpu")
        batches.append({"input_ids": ids, "attention_mask": mask})
    iterations: list[dict] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            stats = pl_module.last_stats
            iterations.append({
                "iteration_s": time.perf_counter() - self.start,
                **{f"{k}_s": stats[f"perf/{k}_sec"] for k in PHASES},
                "prompt_tokens": int(batch["attention_mask"].sum()),
                "response_tokens": int(round(stats["rollout/response_length"] * len(batch["input_ids"]))),
                "ended": int(stats["val/num_eos_tokens"]),
                "kl": stats["objective/kl"],
                "scores": stats["objective/scores"],
            })  # fmt: skip

    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
        default_root_dir=tempfile.mkdtemp(prefix="ppo-bench-run-"),
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None, shuffle=False))
    trainable, _ = count_parameters(module)
    return {
        "framework": "rlhf_lightning",
        "iterations": iterations,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": trainable,
        "threads": torch.get_num_threads(),
    }


ABLATIONS = {
    "fused": "the old log-probs from a policy scoring pass, not from the update's first pass",
    "merge": "generation through the LoRA layers, the adapter not merged",
}


def ablate(names: str) -> None:
    """Turn off the named speed-ups (:data:`ABLATIONS`) in this process; everything else as shipped."""
    names = [n for n in names.split(",") if n]
    if "fused" in names:
        from rlhf_lightning.modules.ppo.module import PPOModule

        PPOModule.builds_in_first_pass = lambda self, rows: False
    if "merge" in names:
        import rlhf_lightning.models.adapters as adapters

        adapters.merged_adapter = adapters.use_adapter
    unknown = set(names) - set(ABLATIONS)
    if unknown:
        sys.exit(f"unknown ablation {sorted(unknown)}; choose from {sorted(ABLATIONS)}")


def finish(result: dict, spec: dict, path: Path) -> None:
    for r in result["iterations"]:
        r["batch"] = spec["batch"]
    result |= summarize_iterations(result["iterations"], spec["warmup"])
    path.write_text(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="runs per framework (alternating)")
    p.add_argument("--iterations", type=int, default=3, help="measured iterations per run (after one warm-up)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--response-length", type=int, default=48)
    p.add_argument("--ppo-epochs", type=int, default=4)
    p.add_argument("--num-minibatches", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["ours", "trl"], default=None, help="run one framework (no ratio)")
    p.add_argument(
        "--ablate",
        action="append",
        default=[],
        metavar="NAME[,NAME]",
        help=f"also run ours without these speed-ups, alternating with the rest: {', '.join(ABLATIONS)}",
    )
    p.add_argument(
        "--before",
        default=None,
        metavar="SRC",
        help="also run ours from another checkout's source folder (the repository root)",
    )
    p.add_argument("--out", type=Path, default=HERE / "results" / "ppo_vs_trl.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--trl-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        if os.environ.get("RLHF_SRC"):  # another checkout of rlhf_lightning (the "before" of a change)
            sys.path.insert(0, os.environ["RLHF_SRC"])
        ablate(os.environ.get("RLHF_ABLATE", ""))
        spec = json.loads(Path(args.worker).read_text())
        result = run_ours(spec)
        import rlhf_lightning

        result["source"] = str(Path(rlhf_lightning.__file__).parent)
        finish(result, spec, args.json_out)
        return
    if args.trl_worker:  # TRL's own environment runs it; its raw record is summarized here
        spec = json.loads(Path(args.trl_worker).read_text())
        raw = args.json_out.with_suffix(".raw.json")
        worker = [str(TRL_PPO_PYTHON), str(HERE / "trl_ppo_worker.py"), "--spec", args.trl_worker, "--json-out"]
        subprocess.run([*worker, str(raw)], check=True)
        finish(json.loads(raw.read_text()), spec, args.json_out)
        return
    if args.only != "ours" and not TRL_PPO_PYTHON.exists():
        sys.exit(f"no TRL environment at {TRL_PPO_PYTHON}: run bash benchmarks/setup_trl_venv.sh --ppo first")

    work = Path(tempfile.mkdtemp(prefix="ppo-vs-trl-"))
    spec = settings(args) | write_stages(work) | {"work": str(work), "warmup": 1}
    spec["prompt_batches"] = prompt_batches(args.batch, args.iterations + 1)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))

    def ours(env: dict[str, str]):
        command = [sys.executable, __file__, "--worker", str(spec_path), "--json-out"]
        return lambda out: ["env", *(f"{k}={v}" for k, v in env.items()), *command, str(out)]

    commands = {
        "rlhf_lightning": ours({}),
        "trl": lambda out: [sys.executable, __file__, "--trl-worker", str(spec_path), "--json-out", str(out)],
    }
    if args.only:
        commands = {k: v for k, v in commands.items() if (k == "trl") == (args.only == "trl")}
    for names in args.ablate:
        commands[f"rlhf_lightning without {names}"] = ours({"RLHF_ABLATE": names})
    if args.before:
        commands["rlhf_lightning before"] = ours({"RLHF_SRC": str(Path(args.before).resolve())})
    runs = alternate(args.repeats, commands, work)
    if args.only or len(runs) < 2 or "trl" not in runs:
        for name, results in runs.items():
            for r in results:
                print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items() if k != "iterations"})
        return
    report(args.out, "PPO iteration on SmolLM2-135M-Instruct, float32, LoRA", args, ("only", "trl_worker"), runs,
           extra=("rollout_s", "scoring_s", "training_s", "mean_response_len"))  # fmt: skip


if __name__ == "__main__":
    main()
