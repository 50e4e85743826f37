"""Write a development task's files: the embedded model's own sampled answers to the task's prompts, labelled by
the task's written rule.

    python -m rlhf_lightning.tasks.generate lists              # sample, label, write into data/assets
    python -m rlhf_lightning.tasks.generate lists OUT_DIR --limit 8   # a quick try elsewhere
    python -m rlhf_lightning.tasks.generate lists --relabel    # label the stored answers again after a rule change

- **Answers**: SmolLM2-135M-Instruct (the embedded model) samples ``--samples`` answers per prompt through its
  chat template at temperature 0.7 (the PPO rollout default), at most ``--max_new_tokens`` new tokens: real model
  text with real faults (rambling, answers cut at the length limit, repetition, drifting off the question).
  Batch ``i`` of prompts draws from seed ``seed + i``, so the answers do not depend on anything else.
- **Held out**: ``task.heldout`` prompts drawn with the seed; their pairs and prompts go to the ``_heldout`` files.
- **Pairs**: for each prompt the best and the worst answer by the rule, when their scores differ by at least
  ``min_gap`` (0.5); an empty answer never enters a pair.

Files written, each ``{task}_{kind}.jsonl`` (read as ``builtin:{task}_{kind}.jsonl`` when written into the
package's ``data/assets``):

=========================  ==========================================================================
``demonstrations``         SFT: ``{prompt, completion}``, the first finished answer to each training prompt
``comparisons``            reward model: ``{prompt, chosen, rejected}`` for the training prompts
``comparisons_heldout``    the same for the held-out prompts
``prompts``                PPO: the training prompts ``{prompt}``
``prompts_heldout``        evaluation: the held-out prompts
``samples``                every sampled answer with ``finished``, its rule score ``gold`` and the rule's parts
=========================  ==========================================================================
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from rlhf_lightning.data.chat import stop_token_ids, text_turns
from rlhf_lightning.models import ModelConfig, load_causal_lm, load_tokenizer
from rlhf_lightning.models.generation import GenerationConfig, generate, generation_eos_ids, seeded
from rlhf_lightning.tasks import ASSETS, TASKS
from rlhf_lightning.tasks.base import Task, words


def split_prompts(task: Task, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(train, held_out)``: ``task.heldout`` prompts drawn with ``seed``; both in the task's order."""
    prompts = list(task.prompts)
    held = set(random.Random(seed).sample(range(len(prompts)), task.heldout))
    return [p for i, p in enumerate(prompts) if i not in held], [p for i, p in enumerate(prompts) if i in held]


def sample_answers(
    prompts: list[str], samples: int, max_new_tokens: int, temperature: float, seed: int, batch_prompts: int = 8
) -> list[list[dict]]:
    """``samples`` answers per prompt from the embedded model: ``[{"text", "finished"}]`` per prompt, where
    ``finished`` says the answer ended with a stop token rather than at ``max_new_tokens``."""
    tokenizer = load_tokenizer("embedded")
    model = load_causal_lm(ModelConfig(name_or_path="embedded"), lora=None, trainable=False).eval()
    stops = stop_token_ids(tokenizer, generation_eos_ids(model))
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature)
    answers: list[list[dict]] = []
    start = time.perf_counter()
    for i in range(0, len(prompts), batch_prompts):
        batch = prompts[i : i + batch_prompts]
        ids = []
        for prompt in batch:
            text = tokenizer.apply_chat_template(
                text_turns(prompt).messages, tokenize=False, add_generation_prompt=True
            )
            ids += [tokenizer(text, add_special_tokens=False)["input_ids"]] * samples
        with seeded(seed + i // batch_prompts, "cpu"), torch.no_grad():
            responses = generate(model, ids, config, stops, tokenizer.pad_token_id)
        for j in range(len(batch)):
            group = responses[j * samples : (j + 1) * samples]
            answers.append(
                [
                    {"text": tokenizer.decode(r, skip_special_tokens=True).strip(), "finished": r[-1] in stops}
                    for r in group
                ]
            )
        print(f"  {i + len(batch)}/{len(prompts)} prompts, {time.perf_counter() - start:.0f} s", flush=True)
    return answers


def build_rows(
    task: Task, prompts: list[str], answers: list[list[dict]], min_gap: float = 0.5
) -> dict[str, list[dict]]:
    """The task's rows from the sampled answers (``answers[i]`` answer ``prompts[i]``): demonstrations, pairs,
    prompts and every sample scored by the rule."""
    demonstrations, pairs, samples = [], [], []
    for prompt, group in zip(prompts, answers):
        scored = []
        for k, answer in enumerate(group):
            parts = task.gold_parts(prompt, answer["text"])
            score = round(sum(parts.values()), 4)
            samples.append({"prompt": prompt, "sample": k, **answer, "gold": score, "parts": parts})
            if answer["text"]:
                scored.append((score, answer))
        finished = [a for _, a in scored if a["finished"]]
        if finished:
            demonstrations.append({"prompt": prompt, "completion": finished[0]["text"]})
        if len(scored) >= 2:
            best = max(scored, key=lambda s: s[0])
            worst = min(scored, key=lambda s: s[0])
            if best[0] - worst[0] >= min_gap and best[1]["text"] != worst[1]["text"]:
                pairs.append({"prompt": prompt, "chosen": best[1]["text"], "rejected": worst[1]["text"]})
    return {"demonstrations": demonstrations, "comparisons": pairs, "prompts": [{"prompt": p} for p in prompts],
            "samples": samples}  # fmt: skip


def stored_answers(task: Task, folder: Path = ASSETS) -> dict[str, list[dict]]:
    """The answers in the task's ``samples`` file, per prompt (to label them again without sampling)."""
    answers: dict[str, list[dict]] = {p: [] for p in task.prompts}
    for line in (folder / f"{task.name}_samples.jsonl").read_text(encoding="utf-8").splitlines():
        sample = json.loads(line)
        answers[sample["prompt"]].append({"text": sample["text"], "finished": sample["finished"]})
    return answers


def describe(task: Task, folder: Path = ASSETS) -> str:
    """A few lines on the task's files in ``folder``: prompts, pairs and demonstrations; how often an answer
    finished; the mean words per answer; how often the chosen answer is the shorter one; and by how much the
    chosen answer leads the rejected one on each part of the rule, on average over the training pairs."""

    def read(kind: str) -> list[dict]:
        path = folder / f"{task.name}_{kind}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"no {path}: write the task's files first (python -m {__spec__.name} {task.name} "
                                    f"{folder})")  # fmt: skip
        return [json.loads(line) for line in path.read_text("utf-8").splitlines()]

    samples, pairs = read("samples"), read("comparisons")
    if not pairs or not samples:
        return f"{task.name}: {len(samples)} sampled answers and no training pairs in {folder}"
    lead: dict[str, float] = {}
    for pair in pairs:
        chosen, rejected = (
            task.gold_parts(pair["prompt"], pair["chosen"]),
            task.gold_parts(pair["prompt"], pair["rejected"]),
        )
        for part in [*chosen, *(k for k in rejected if k not in chosen)]:  # the rule's order, for equal leads
            lead[part] = lead.get(part, 0.0) + (chosen.get(part, 0.0) - rejected.get(part, 0.0)) / len(pairs)
    shorter = sum(len(words(p["chosen"])) < len(words(p["rejected"])) for p in pairs) / len(pairs)
    leads = ", ".join(f"{part} {value:+.2f}" for part, value in sorted(lead.items(), key=lambda kv: -abs(kv[1])))
    return (
        f"{task.name} ({task.rule}): {len(read('prompts'))} training and {len(read('prompts_heldout'))} held-out "
        f"prompts, {len(pairs)} training and {len(read('comparisons_heldout'))} held-out pairs, "
        f"{len(read('demonstrations'))} demonstrations\n"
        f"  answers: {sum(s['finished'] for s in samples) / len(samples):.0%} finished, "
        f"{sum(len(words(s['text'])) for s in samples) / len(samples):.0f} words on average\n"
        f"  training pairs: the chosen answer is the shorter in {shorter:.0%}; it leads on {leads}"
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def write_jsonl(rows: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("out_dir", nargs="?", default=None, help=f"where the files go (default: {ASSETS}, the "
                        "shipped files; required with --limit)")  # fmt: skip
    parser.add_argument("--samples", type=int, default=4, help="answers sampled per prompt")
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=_positive, default=None, help="only the first N prompts, none held out (a "
                        "try; give an out_dir)")  # fmt: skip
    parser.add_argument("--relabel", action="store_true", help="label the answers in out_dir's samples file again "
                        "with the current rule (after changing it), without sampling")  # fmt: skip
    parser.add_argument("--describe", action="store_true", help="describe the files in out_dir; write nothing")
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    if args.limit is not None and args.out_dir is None:
        parser.error(f"--limit writes a trial of {args.limit} prompts: give an out_dir, not to overwrite the "
                     f"shipped files in {ASSETS}")  # fmt: skip
    out = Path(args.out_dir) if args.out_dir is not None else ASSETS
    if args.describe or args.relabel:
        if not (out / f"{task.name}_samples.jsonl").exists():
            parser.error(f"no {out / f'{task.name}_samples.jsonl'}: write the task's files there first")
        if args.describe:
            print(describe(task, out))
            return
    out.mkdir(parents=True, exist_ok=True)
    if args.limit is None:
        train, held_out = split_prompts(task, args.seed)
    else:
        train, held_out = list(task.prompts[: args.limit]), []
    if args.relabel:
        answers = stored_answers(task, out)
    else:
        prompts = list(task.prompts[: args.limit])
        print(f"{task.name}: sampling {args.samples} answers to {len(prompts)} prompts with the embedded model")
        answers = dict(zip(prompts, sample_answers(prompts, args.samples, args.max_new_tokens, args.temperature,
                                                   args.seed)))  # fmt: skip
    train_rows = build_rows(task, train, [answers[p] for p in train])
    held_rows = build_rows(task, held_out, [answers[p] for p in held_out])
    for kind, rows in (
        ("demonstrations", train_rows["demonstrations"]),
        ("comparisons", train_rows["comparisons"]),
        ("comparisons_heldout", held_rows["comparisons"]),
        ("prompts", train_rows["prompts"]),
        ("prompts_heldout", held_rows["prompts"]),
        ("samples", train_rows["samples"] + held_rows["samples"]),
    ):
        write_jsonl(rows, out / f"{task.name}_{kind}.jsonl")
    for name, rows in (("train", train_rows), ("held-out", held_rows)):
        print(f"{name}: {len(rows['prompts'])} prompts, {len(rows['comparisons'])} pairs, "
              f"{len(rows['demonstrations'])} demonstrations")  # fmt: skip
    print(describe(task, out))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
