"""The development task: the embedded model's own answers to everyday requests, labelled by a written rule.

The quickstart's comparisons are templated sentences whose preference is one word list; a reward model
reaches 100% on them and its gold rule is exactly what the data encodes, so it cannot show a reward model
that learns the wrong thing, or a policy that pleases the reward model while getting worse. This task can:

- **Prompts**: 320 everyday requests written by hand (``assets/everyday_requests.txt``: cooking, home,
  gardening, pets, travel, money, work, writing, health habits, technology, hobbies, science, language,
  social situations, nature), about 40% of them asking for a short answer. 60 are held out (seeded).
- **Answers**: SmolLM2-135M-Instruct (the embedded model) samples ``samples`` answers per request through
  its chat template (temperature 0.7, the rollout default; at most ``max_new_tokens`` tokens): real model
  text with real faults (rambling, answers cut at the length limit, repetition, drifting off the question).
- **Labels**: :func:`gold_score`, a fixed rule a person can check on any answer (below). For each request
  the best and the worst answer by the rule form a ``{prompt, chosen, rejected}`` pair in the standard text
  format (pairs whose scores differ by less than 0.5 are left out as too close to call).

Files written (``python -m rlhf_lightning.data.everyday OUT_DIR``; the shipped ones are in ``data/assets``
and read as ``builtin:everyday_*.jsonl``):

===================================  =============================================================
``everyday_demonstrations.jsonl``    SFT: ``{prompt, completion}``, the first finished answer to each training request
``everyday_comparisons.jsonl``       reward model: training pairs ``{prompt, chosen, rejected}``
``everyday_comparisons_heldout.jsonl``  held-out pairs (the held-out requests)
``everyday_prompts.jsonl``           PPO: the training requests ``{prompt}``
``everyday_prompts_heldout.jsonl``   evaluation: the held-out requests
``everyday_samples.jsonl``           every sampled answer with its rule score and parts, to inspect or relabel
===================================  =============================================================
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

import torch

from rlhf_lightning.data.chat import stop_token_ids, text_turns
from rlhf_lightning.models import ModelConfig, load_causal_lm, load_tokenizer
from rlhf_lightning.models.generation import GenerationConfig, generate, generation_eos_ids, seeded

ASSETS = Path(__file__).parent / "assets"
REQUESTS_FILE = ASSETS / "everyday_requests.txt"
HELDOUT_REQUESTS = 60

_STOPWORDS = set(
    """a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further get give had has have
    having he her here hers herself him himself his how i if in into is it its itself just let like me might
    more most my myself no nor not now of off on once one only or other our ours ourselves out over own please
    quick quickly same say she should short shortly so some such tell than that the their theirs them
    themselves then there these they this those through to too two under until up very was we were what when
    where which while who whom why will with would you your yours yourself yourselves brief briefly answer
    sentence sentences word words few idea ideas tip tips way ways thing things good best make need want
    something really much many well""".split()
)
_BREVITY = re.compile(r"\b(brief|briefly|short|quick|one sentence|a sentence|single sentence|one line|few words|"
                      r"one idea|one tip|one word|in a word|concise|sentence or two)\b", re.IGNORECASE)  # fmt: skip
_EVASIVE = ("as an ai", "i'm sorry", "i am sorry", "i cannot", "i can't help", "i don't have personal",
            "i do not have personal", "i'm not able to", "i am not able to")  # fmt: skip
_WORD = re.compile(r"[a-z0-9']+")


def _stems(text: str) -> set[str]:
    """Content words of ``text`` (lowercase, 3+ letters, not a stop word), cut to 5 characters so that
    ``water``/``watering`` and ``plant``/``plants`` match."""
    return {w[:5] for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in _STOPWORDS}


def gold_parts(prompt: str, response: str) -> dict[str, float]:
    """The parts of :func:`gold_score` for one answer (each documented there)."""
    words = _WORD.findall(response.lower())
    if not words:
        return {"empty": -3.0}
    topic = _stems(prompt)
    covered = len(topic & _stems(response)) / len(topic) if topic else 1.0
    target = 30 if _BREVITY.search(prompt) else 60
    bigrams = list(zip(words, words[1:]))
    repeated = 1 - len(set(bigrams)) / len(bigrams) if bigrams else 0.0
    text = response.strip().lower()
    request = _WORD.findall(prompt.lower())
    copied = sum(b in set(zip(request, request[1:])) for b in bigrams) / len(bigrams) if bigrams else 0.0
    return {
        "relevance": 2.0 * covered,
        "echo": -3.0 if copied > 0.5 else 0.0,
        "length": -min(2.0, max(0, len(words) - target) / target),
        "finished": 0.5 if response.rstrip().endswith((".", "!", "?", ")", '"')) else -0.5,
        "repetition": -3.0 * repeated,
        "evasive": -1.0 if any(p in text for p in _EVASIVE) else 0.0,
        "too_short": -1.0 if len(words) < 3 else 0.0,
    }


def gold_score(prompt: str, response: str) -> float:
    """The task's true preference: an answer that addresses the request's specifics, at the length asked for,
    finished, without repeating itself or evading. The sum of:

    - ``relevance``: 2 x the fraction of the request's content words (stop words removed, 5-character stems)
      that the answer uses, in [0, 2];
    - ``length``: 0 up to a target of 30 words when the request asks for brevity ("briefly", "in a sentence",
      "quick tip", ...) and 60 otherwise, then -1 per target length beyond it, down to -2;
    - ``finished``: +0.5 when the answer ends a sentence (``.``, ``!``, ``?``, a closing bracket or quote),
      else -0.5 (cut off at the length limit or mid-thought);
    - ``repetition``: -3 x the share of repeated word bigrams;
    - ``echo``: -3 when more than half of the answer's word bigrams are the request's own (the question
      repeated back: it uses every content word of the request, and answers nothing);
    - ``evasive``: -1 for a refusal or disclaimer ("As an AI", "I'm sorry", "I cannot", ...);
    - ``too_short``: -1 under 3 words.

    An empty answer scores -3. Range about [-10, 2.5].
    """
    return round(sum(gold_parts(prompt, response).values()), 4)


def gold_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """:func:`gold_score` per (prompt, response), as a PPO reward or gold function
    (``rlhf_lightning.data.everyday:gold_reward``)."""
    return [gold_score(p, r) for p, r in zip(prompts, responses)]


def read_requests(path: Path = REQUESTS_FILE) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def split_requests(requests: list[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """``(train, held_out)``: :data:`HELDOUT_REQUESTS` requests drawn with ``seed``, in file order."""
    held = set(random.Random(seed).sample(range(len(requests)), HELDOUT_REQUESTS))
    return [r for i, r in enumerate(requests) if i not in held], [r for i, r in enumerate(requests) if i in held]


def sample_answers(
    requests: list[str], samples: int, max_new_tokens: int, temperature: float, seed: int, batch_prompts: int = 8
) -> list[list[dict]]:
    """``samples`` answers per request from the embedded model: ``[{"text", "finished"}]`` per request.
    Batch ``i`` draws from ``seed + i``, so the output does not depend on anything else."""
    tokenizer = load_tokenizer("embedded")
    model = load_causal_lm(ModelConfig(name_or_path="embedded"), lora=None, trainable=False).eval()
    stops = stop_token_ids(tokenizer, generation_eos_ids(model))
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature)
    answers: list[list[dict]] = []
    start = time.perf_counter()
    for i in range(0, len(requests), batch_prompts):
        batch = requests[i : i + batch_prompts]
        prompts = []
        for request in batch:
            text = tokenizer.apply_chat_template(
                text_turns(request).messages, tokenize=False, add_generation_prompt=True
            )
            prompts += [tokenizer(text, add_special_tokens=False)["input_ids"]] * samples
        with seeded(seed + i // batch_prompts, "cpu"), torch.no_grad():
            responses = generate(model, prompts, config, stops, tokenizer.pad_token_id)
        for j in range(len(batch)):
            group = responses[j * samples : (j + 1) * samples]
            answers.append(
                [
                    {"text": tokenizer.decode(r, skip_special_tokens=True).strip(), "finished": r[-1] in stops}
                    for r in group
                ]
            )
        done = i + len(batch)
        print(f"  {done}/{len(requests)} requests, {time.perf_counter() - start:.0f} s", flush=True)
    return answers


def build_rows(requests: list[str], answers: list[list[dict]], min_gap: float = 0.5) -> dict[str, list[dict]]:
    """The task's rows from the sampled answers: demonstrations, pairs, prompts and all samples scored."""
    demonstrations, pairs, samples = [], [], []
    for request, group in zip(requests, answers):
        scored = []
        for k, answer in enumerate(group):
            parts = gold_parts(request, answer["text"])
            score = round(sum(parts.values()), 4)
            samples.append({"prompt": request, "sample": k, **answer, "gold": score, "parts": parts})
            if answer["text"]:
                scored.append((score, answer))
        finished = [a for _, a in scored if a["finished"]]
        if finished:
            demonstrations.append({"prompt": request, "completion": finished[0]["text"]})
        if len(scored) >= 2:
            best = max(scored, key=lambda s: s[0])
            worst = min(scored, key=lambda s: s[0])
            if best[0] - worst[0] >= min_gap and best[1]["text"] != worst[1]["text"]:
                pairs.append({"prompt": request, "chosen": best[1]["text"], "rejected": worst[1]["text"]})
    return {
        "demonstrations": demonstrations,
        "comparisons": pairs,
        "prompts": [{"prompt": r} for r in requests],
        "samples": samples,
    }


def write_jsonl(rows: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", nargs="?", default=str(ASSETS))
    parser.add_argument("--samples", type=int, default=4, help="answers sampled per request")
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N requests (a quick try)")
    parser.add_argument(
        "--relabel", action="store_true", help="label the answers of the shipped everyday_samples.jsonl again "
        "with the current rule (after changing it), without sampling"
    )  # fmt: skip
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    requests = read_requests()[: args.limit]
    train, held_out = split_requests(requests, args.seed) if args.limit is None else (requests, [])
    if args.relabel:
        answers: dict[str, list[dict]] = {r: [] for r in requests}
        for line in (ASSETS / "everyday_samples.jsonl").read_text(encoding="utf-8").splitlines():
            sample = json.loads(line)
            answers[sample["prompt"]].append({"text": sample["text"], "finished": sample["finished"]})
    else:
        print(f"sampling {args.samples} answers to {len(requests)} requests with the embedded model", flush=True)
        sampled = sample_answers(requests, args.samples, args.max_new_tokens, args.temperature, args.seed)
        answers = dict(zip(requests, sampled))
    train_rows = build_rows(train, [answers[r] for r in train])
    held_rows = build_rows(held_out, [answers[r] for r in held_out])
    write_jsonl(train_rows["demonstrations"], out / "everyday_demonstrations.jsonl")
    write_jsonl(train_rows["comparisons"], out / "everyday_comparisons.jsonl")
    write_jsonl(held_rows["comparisons"], out / "everyday_comparisons_heldout.jsonl")
    write_jsonl(train_rows["prompts"], out / "everyday_prompts.jsonl")
    write_jsonl(held_rows["prompts"], out / "everyday_prompts_heldout.jsonl")
    write_jsonl(train_rows["samples"] + held_rows["samples"], out / "everyday_samples.jsonl")
    for name, rows in (("train", train_rows), ("held-out", held_rows)):
        print(f"{name}: {len(rows['prompts'])} requests, {len(rows['comparisons'])} pairs, "
              f"{len(rows['demonstrations'])} demonstrations")  # fmt: skip
    print(f"-> {out}")


if __name__ == "__main__":
    main()
