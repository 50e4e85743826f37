"""Reward model held-out accuracy: the project's reward stage against a minimal recipe, on a development task.

``--task`` picks the development task (docs/development-task.md: everyday, lists, lengths, tone); its training
and held-out pairs are ``builtin:TASK_comparisons.jsonl`` and ``builtin:TASK_comparisons_heldout.jsonl``, and
the record goes to ``results/reward_baseline_TASK.json``.

The minimal recipe is what a user writes in forty lines with transformers and peft:
``AutoModelForSequenceClassification`` (one label) on the embedded SmolLM2-135M-Instruct, from the base model;
peft LoRA r 16, alpha 32, dropout 0 on the seven linear projections (task ``SEQ_CLS``: the score head is
trained in full); AdamW at a constant 3e-4, no warmup, gradient clipping 1.0; batch 8 pairs; each pair's
texts chat-formatted (the tokenizer's chat template on ``[user: prompt, assistant: answer]``); the
Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected)``; the tokenizer's own pad token. transformers reads
the score at the last token the template writes (for SmolLM2 the newline after ``<|im_end|>``);
``--recipe-score-at eos`` reads it at ``<|im_end|>`` itself, where ours reads it.

Ours is ``rlhf-lightning fit --config configs/reward.yaml`` with the task's files and the same epochs and
batch, every other setting as shipped (pass ``--sft`` to start from a dev-task SFT run's adapter, as the
shipped config does; without it ours starts from the base model, as the recipe does). ``--variant
NAME=OVERRIDES`` adds runs of ours with command-line overrides (``;``-separated), one per factor of the
table in docs/reward.md. ``--check-objective`` starts ours from the recipe's initial weights and feeds both the
same batches: the losses and gradients of the first steps show whether the two compute the same objective, so
that what is left between them is the random draws (initial weights, batch order) that ``--seeds`` varies.

Held-out accuracy (pairs whose chosen answer scores higher; ties count half) on two sets: the task's
held-out pairs (each held-out request's best answer against its worst; 35 to 58 per task) after every epoch,
and, after the last epoch, every pair of the held-out requests' sampled answers whose gold scores differ by at
least 0.5 (several per request, harder ones included). Every run in its own process, one after
another; ``--seeds`` repeats every run at each seed (the seed of the LoRA and head initialisation and of
the batch order), so a factor's effect can be told from seed noise:

    .venv/bin/python benchmarks/reward_baseline.py --epochs 1 --seeds 0 1 2
    .venv/bin/python benchmarks/reward_baseline.py --summary      # the table across every task's record
    .venv/bin/python benchmarks/reward_baseline.py --task lengths --check-objective  # same weights, same batches
    .venv/bin/python benchmarks/reward_baseline.py --epochs 2 --only ours \\
        --variant "previous defaults=--model.init_args.optim.lr=1e-4;--model.init_args.optim.schedule=cosine;\\
--model.init_args.optim.warmup_ratio=0.03;--model.init_args.head_init_std=null"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def read_pairs(source: str) -> list[dict]:
    from rlhf_lightning.data.readers import read_rows

    return [row for _, row in read_rows(source)]


def heldout_samples(task: str, heldout: str) -> list[dict]:
    """The sampled answers to the held-out prompts (``{prompt, response, gold}``), from the task's samples."""
    from rlhf_lightning.tasks import ASSETS

    requests = {row["prompt"] for row in read_pairs(heldout)}
    rows = [json.loads(line) for line in (ASSETS / f"{task}_samples.jsonl").read_text().splitlines() if line]
    return [{"prompt": r["prompt"], "response": r["text"], "gold": r["gold"]} for r in rows if r["prompt"] in requests]


def gold_pairs(samples: list[dict], min_gap: float = 0.5) -> list[tuple[int, int]]:
    """``(better, worse)`` indices of every two answers to one request whose gold scores differ by ``min_gap``."""
    pairs = []
    for i, a in enumerate(samples):
        for j, b in enumerate(samples):
            if a["prompt"] == b["prompt"] and a["gold"] - b["gold"] >= min_gap:
                pairs.append((i, j))
    return pairs


def pair_accuracy(scores: list[float], pairs: list[tuple[int, int]]) -> float:
    """Share of ``pairs`` whose better answer scores higher (ties count half)."""
    wins = sum(1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0 for i, j in pairs)
    return wins / len(pairs)


def recipe_model(args: argparse.Namespace):
    """The recipe's ``(model, tokenizer, chat)``: the LoRA sequence classifier, seeded with ``args.seed``, and
    ``chat(prompt, answer)``, the chat-formatted text it scores (:func:`run_recipe`)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_lightning.models import embedded_model_dir

    torch.manual_seed(args.seed)
    path = embedded_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="SEQ_CLS")
    model = get_peft_model(model, lora)

    def chat(prompt: str, answer: str) -> str:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tokenize=False
        )
        if args.recipe_score_at == "eos":  # drop what the template writes after the answer's end-of-turn token
            text = text[: text.rindex(tokenizer.eos_token) + len(tokenizer.eos_token)]
        return text

    return model, tokenizer, chat


def run_recipe(args: argparse.Namespace) -> dict:
    """The minimal recipe, in this process. Returns held-out accuracy per epoch and on all held-out pairs."""
    import torch

    model, tokenizer, chat = recipe_model(args)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.recipe_lr)

    def texts(rows: list[dict], key: str) -> list[str]:
        return [chat(r["prompt"], r[key]) for r in rows]

    def scores(batch: list[str]) -> torch.Tensor:
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=args.max_length)
        return model(**enc).logits.squeeze(-1)

    train, heldout = read_pairs(args.train), read_pairs(args.heldout)
    order = list(range(len(train)))
    rng = random.Random(args.seed)
    accuracies, start = [], time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        rng.shuffle(order)
        for i in range(0, len(order), args.batch_size):
            rows = [train[j] for j in order[i : i + args.batch_size]]
            both = scores(texts(rows, "chosen") + texts(rows, "rejected"))
            loss = -torch.nn.functional.logsigmoid(both[: len(rows)] - both[len(rows) :]).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        wins = 0.0
        with torch.no_grad():
            for i in range(0, len(heldout), 16):
                rows = heldout[i : i + 16]
                both = scores(texts(rows, "chosen") + texts(rows, "rejected"))
                c, r = both[: len(rows)], both[len(rows) :]
                wins += float((c > r).sum() + 0.5 * (c == r).sum())
        accuracies.append(wins / len(heldout))
        print(f"recipe: epoch {epoch + 1} held-out accuracy {accuracies[-1]:.3f}", flush=True)
    seconds = time.perf_counter() - start
    samples = heldout_samples(args.task, args.heldout)
    with torch.no_grad():
        texts_all = [chat(s["prompt"], s["response"]) for s in samples]
        all_scores = [float(x) for i in range(0, len(samples), 16) for x in scores(texts_all[i : i + 16])]
    all_pairs = pair_accuracy(all_scores, gold_pairs(samples))
    print(f"recipe: all held-out pairs {all_pairs:.3f}", flush=True)
    return {"accuracy_per_epoch": accuracies, "all_pairs_accuracy": all_pairs, "seconds": seconds}


def check_objective(args: argparse.Namespace) -> dict:
    """Ours and the recipe on the same weights and the same batches: do they compute the same loss and gradients?

    Ours is :class:`~rlhf_lightning.RewardModule` with its defaults from the base model (the shipped config's
    settings), its batches built by :class:`~rlhf_lightning.ComparisonsDataModule` (shared-prompt packing
    included) and its optimizer by its own ``optim`` settings; its LoRA and head weights are copied from the
    recipe's initial ones. Both then take ``args.check_steps`` steps on the first batches of the training pairs,
    in file order (gradient clipping 1.0 on both). The recipe's text is cut at the end-of-turn token, where ours
    reads the score. Returns each step's loss on both sides, the relative gap of the gradients, and the training
    pairs whose token ids differ between the two (chosen, rejected)."""
    import torch

    from rlhf_lightning import ComparisonsDataModule, RewardModule
    from rlhf_lightning.models.config import ModelConfig
    from rlhf_lightning.modules.optim import build_optimizer
    from rlhf_lightning.ops import preference_loss

    args = argparse.Namespace(**{**vars(args), "recipe_score_at": "eos"})
    recipe, tokenizer, chat = recipe_model(args)
    ours = RewardModule(model=ModelConfig(name_or_path="embedded", adapter=None))
    ours.configure_model()
    ours.train()
    theirs = {n.split(".layers.", 1)[1]: p for n, p in recipe.named_parameters() if "lora_" in n}
    mine = {n.split(".layers.", 1)[1]: p for n, p in ours.named_parameters() if "lora_" in n}
    if theirs.keys() != mine.keys():
        raise RuntimeError("the recipe's LoRA weights and ours do not correspond one to one")
    (score,) = [p for n, p in recipe.named_parameters() if "score" in n and p.requires_grad]
    with torch.no_grad():
        for key, weight in theirs.items():
            mine[key].copy_(weight)
        ours.score_head.linear.weight.copy_(score)
        ours.score_head.linear.bias.zero_()  # transformers' classification head has no bias
    data = ComparisonsDataModule(
        train_files=args.train,
        val_files=args.heldout,
        tokenizer="embedded",
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    data.setup("fit")
    rows = read_pairs(args.train)
    if len(data.train_examples) != len(rows):
        raise RuntimeError(f"ours kept {len(data.train_examples)} of the {len(rows)} training pairs")
    differ = [  # the token ids each side scores, for every training pair
        i + 1
        for i, (row, example) in enumerate(zip(rows, data.train_examples))
        if [tokenizer(chat(row["prompt"], row[key]))["input_ids"] for key in ("chosen", "rejected")]
        != [example.sequences[b] for b in example.pairs[0]]
    ]
    print(f"token ids: {len(rows) - len(differ)} of {len(rows)} training pairs identical on both sides", flush=True)
    recipe_optimizer = torch.optim.AdamW([p for p in recipe.parameters() if p.requires_grad], lr=args.recipe_lr)
    ours_optimizer = build_optimizer(ours.parameters(), ours.optim_config)
    collate, b, steps = data.collate_fn(), args.batch_size, []
    for step in range(args.check_steps):
        chunk = rows[step * b : (step + 1) * b]
        texts = [chat(r["prompt"], r["chosen"]) for r in chunk] + [chat(r["prompt"], r["rejected"]) for r in chunk]
        both = recipe(**tokenizer(texts, return_tensors="pt", padding=True)).logits.squeeze(-1)
        recipe_loss = -torch.nn.functional.logsigmoid(both[: len(chunk)] - both[len(chunk) :]).mean()
        batch = collate(data.train_examples[step * b : (step + 1) * b])
        scores = ours.batch_scores(batch)
        ours_loss = preference_loss(scores, batch["better"], batch["worse"], batch["group"], batch["margin"]).loss
        recipe_loss.backward()
        ours_loss.backward()
        g_recipe = torch.cat([theirs[k].grad.flatten() for k in sorted(theirs)] + [score.grad.flatten()])
        g_ours = torch.cat(
            [mine[k].grad.flatten() for k in sorted(mine)] + [ours.score_head.linear.weight.grad.flatten()]
        )
        steps.append({
            "recipe_loss": recipe_loss.item(),
            "ours_loss": ours_loss.item(),
            "gradient_relative_gap": ((g_recipe - g_ours).norm() / g_recipe.norm()).item(),
        })  # fmt: skip
        print(f"step {step + 1}: loss recipe {recipe_loss.item():.7f} ours {ours_loss.item():.7f}, "
              f"gradients differ by {steps[-1]['gradient_relative_gap']:.1e} of their norm", flush=True)  # fmt: skip
        for optimizer, model in ((recipe_optimizer, recipe), (ours_optimizer, ours)):
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            optimizer.zero_grad()
    return {
        "steps": steps,
        "max_loss_gap": max(abs(s["recipe_loss"] - s["ours_loss"]) for s in steps),
        "pairs_with_other_token_ids": {"count": len(differ), "of": len(rows), "rows": differ[:20]},
        "optimizer": {"recipe": f"AdamW lr {args.recipe_lr}, weight decay 0.01 (torch's default), constant",
                      "ours": f"{ours.optim_config.optimizer} lr {ours.optim_config.lr}, weight decay "
                              f"{ours.optim_config.weight_decay}, {ours.optim_config.schedule}"},
    }  # fmt: skip


def run_ours(args: argparse.Namespace, overrides: list[str], work: Path) -> dict:
    """``rlhf-lightning fit --config configs/reward.yaml`` with the task's files, in a fresh process."""
    run_dir = Path(tempfile.mkdtemp(prefix="reward-", dir=work))
    command = [
        str(ROOT / ".venv" / "bin" / "rlhf-lightning"), "fit", "--config", str(ROOT / "configs" / "reward.yaml"),
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.max_epochs={args.epochs}",
        "--trainer.val_check_interval=1.0",
        "--trainer.enable_progress_bar=false",
        f"--seed_everything={args.seed}",
        f"--data.init_args.shuffle_seed={args.seed}",
        f"--data.init_args.train_files={args.train}",
        f"--data.init_args.val_files={args.heldout}",
        f"--data.init_args.batch_size={args.batch_size}",
        f"--data.init_args.max_length={args.max_length}",
        f"--model.init_args.model.adapter={args.sft}" if args.sft else '--model.init_args.model={"adapter": null}',
        f"--model.init_args.calibration_files=[builtin:{args.task}_demonstrations.jsonl]",
        *overrides,
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(run_dir.rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events[-1].parent))
    accumulator.Reload()
    accuracy = [e.value for e in sorted(accumulator.Scalars("val/accuracy"), key=lambda e: e.step)]
    report = next(run_dir.rglob("degenerate_check.json"), None)
    degenerate = json.loads(report.read_text())["kinds"] if report else None
    from rlhf_lightning.commands.score import score_file

    samples = heldout_samples(args.task, args.heldout)
    answers, scored = run_dir / "heldout_samples.jsonl", run_dir / "heldout_scored.jsonl"
    answers.write_text("".join(json.dumps(s) + "\n" for s in samples))
    score_file(str(report.parent if report else run_dir / "final"), str(answers), str(scored))
    all_scores = [json.loads(line)["score"] for line in scored.read_text().splitlines()]
    all_pairs = pair_accuracy(all_scores, gold_pairs(samples))
    print(f"ours {overrides}: held-out accuracy per epoch {[round(a, 3) for a in accuracy]}, "
          f"all held-out pairs {all_pairs:.3f}", flush=True)  # fmt: skip
    return {
        "accuracy_per_epoch": accuracy,
        "all_pairs_accuracy": all_pairs,
        "seconds": seconds,
        "overrides": overrides,
        "degenerate": degenerate,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per batch")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--recipe-lr", type=float, default=3e-4)
    p.add_argument(
        "--recipe-score-at",
        choices=["template_end", "eos"],
        default="template_end",
        help="the recipe reads the score at the last token the chat template writes (a newline after "
        "the end-of-turn token for SmolLM2), or at the end-of-turn token itself, where ours reads it",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="every run is repeated at each seed")
    p.add_argument("--task", default="everyday", help="the development task (docs/development-task.md)")
    p.add_argument("--train", default=None, help="training pairs (default: the task's)")
    p.add_argument("--heldout", default=None, help="held-out pairs (default: the task's)")
    p.add_argument("--sft", default=None, help="ours starts from this SFT run's final adapter (default: base model)")
    p.add_argument("--only", choices=["recipe", "ours", "variants"], default=None, help="run only these")
    p.add_argument("--variant", action="append", default=[], help="NAME=OVERRIDE;OVERRIDE... (more runs of ours)")
    p.add_argument("--out", type=Path, default=None, help="default: results/reward_baseline_TASK.json")
    p.add_argument("--summary", action="store_true", help="print the table across every task's record; run nothing")
    p.add_argument(
        "--check-objective",
        action="store_true",
        help="run ours and the recipe from the same weights on the same batches and compare loss and gradients; "
        "the result goes into the record under objective_check",
    )
    p.add_argument("--check-steps", type=int, default=6, help="steps of --check-objective")
    args = p.parse_args()
    if args.summary:
        print_summary(sorted((HERE / "results").glob("reward_baseline_*.json")))
        return
    args.train = args.train or f"builtin:{args.task}_comparisons.jsonl"
    args.heldout = args.heldout or f"builtin:{args.task}_comparisons_heldout.jsonl"
    args.out = args.out or HERE / "results" / f"reward_baseline_{args.task}.json"
    if args.check_objective:
        args.seed = args.seeds[0]
        result = check_objective(args)
        record = json.loads(args.out.read_text()) if args.out.exists() else {}
        record["objective_check"] = {**result, "seed": args.seed, "date": time.strftime("%Y-%m-%d")}
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"largest loss gap {result['max_loss_gap']:.1e} -> {args.out} (objective_check)")
        return
    work = Path(tempfile.mkdtemp(prefix="reward-baseline-"))
    recipe = "minimal recipe" + (", score read at the end-of-turn token" if args.recipe_score_at == "eos" else "")
    jobs = [(recipe, None)] if args.only in (None, "recipe") else []
    if args.only in (None, "ours"):
        start = "from the SFT adapter" if args.sft else "from the base model"
        jobs.append((f"ours (configs/reward.yaml, {start})", []))
    if args.only != "recipe":
        for variant in args.variant:
            name, _, overrides = variant.partition("=")
            jobs.append((f"ours, {name}", [o for o in overrides.split(";") if o]))
    for seed in args.seeds:  # the record is written after each run: an interrupted sweep keeps its runs
        for name, overrides in jobs:
            args.seed = seed
            result = run_recipe(args) if overrides is None else run_ours(args, overrides, work)
            save(args, f"{name}, seed {seed}", result)
    print_table(json.loads(args.out.read_text())["runs"])
    print(f"-> {args.out}")


def print_table(runs: dict) -> None:
    """One row per setting: each seed's accuracies, and their means."""
    settings: dict[str, list[dict]] = {}
    for name, run in runs.items():
        settings.setdefault(name.rpartition(", seed ")[0] or name, []).append(run)
    print("\n| run | seeds | held-out pairs, epoch 1 | mean | last epoch | mean | all held-out pairs, last epoch "
          "| mean | minutes |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")

    def cells(values: list[float]) -> str:
        return f"{' / '.join(f'{a:.3f}' for a in values)} | {mean_and_error(values)}" if values else "- | -"

    for name, group in settings.items():
        group.sort(key=lambda run: run["settings"]["seed"])
        first = [run["accuracy_per_epoch"][0] for run in group]
        last = [run["accuracy_per_epoch"][-1] for run in group]
        every = [run["all_pairs_accuracy"] for run in group if "all_pairs_accuracy" in run]
        epochs = group[0]["settings"]["epochs"]
        minutes = sum(run["seconds"] for run in group) / len(group) / 60
        print(f"| {name} ({epochs} epochs) | {len(group)} | {cells(first)} | {cells(last)} | {cells(every)} "
              f"| {minutes:.1f} |")  # fmt: skip


def mean_and_error(values: list[float]) -> str:
    """``mean ± standard error`` (the sample standard deviation over sqrt(n)); the mean alone for one value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {statistics.stdev(values) / len(values) ** 0.5:.3f}"


def print_summary(records: list[Path]) -> None:
    """One row per task and setting: the mean over seeds of held-out accuracy after the first and the last epoch,
    on all held-out pairs, and the degenerate check (share of held-out prompts where an empty answer and the
    request repeated back score above the median real answer); then the mean over the tasks of each setting
    measured on every task."""
    print("| task | run | seeds | epochs | held-out pairs, epoch 1 | last epoch | all pairs | empty above median "
          "| request repeated above median |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    means: dict[str, list[tuple[float, float, float]]] = {}
    tasks = 0
    for record in records:
        runs = json.loads(record.read_text())["runs"]
        task = record.stem.removeprefix("reward_baseline_")
        if task == "single_seed":
            continue
        tasks += 1
        settings: dict[str, list[dict]] = {}
        for name, run in runs.items():
            settings.setdefault(name.rpartition(", seed ")[0] or name, []).append(run)
        for name, group in settings.items():
            first = sum(r["accuracy_per_epoch"][0] for r in group) / len(group)
            last = sum(r["accuracy_per_epoch"][-1] for r in group) / len(group)
            every = sum(r.get("all_pairs_accuracy", float("nan")) for r in group) / len(group)
            checks = [r["degenerate"] for r in group if r.get("degenerate")]
            shares = {
                kind: " / ".join(f"{c[kind]['above_median_real']:.2f}" for c in checks if kind in c) or "-"
                for kind in ("empty", "prompt_repeated")
            }
            epochs = group[0]["settings"]["epochs"]
            print(f"| {task} | {name} | {len(group)} | {epochs} | {first:.3f} | {last:.3f} | {every:.3f} "
                  f"| {shares['empty']} | {shares['prompt_repeated']} |")  # fmt: skip
            means.setdefault(f"{name} ({epochs} epochs)", []).append((first, last, every))
    for name, values in means.items():
        if len(values) == tasks and tasks > 1:
            first, last, every = (sum(v[i] for v in values) / tasks for i in range(3))
            print(f"| mean of {tasks} tasks | {name} | | | {first:.3f} | {last:.3f} | {every:.3f} | | |")


def save(args: argparse.Namespace, name: str, result: dict) -> None:
    """Add one run to the JSON record (runs of earlier invocations with other names are kept)."""
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    record = {
        "benchmark": f"reward-model held-out accuracy on the {args.task} development task",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores",
        "pairs": {"train": len(read_pairs(args.train)), "heldout": len(read_pairs(args.heldout))},
        "runs": {**previous.get("runs", {}), name: {**result, "settings": {
            k: v for k, v in vars(args).items() if k not in ("out", "variant", "only", "seeds")}}},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
