"""The project's own small task, generated deterministically: one-sentence reviews.

A user asks for a one-sentence review of a named cafe, book, film, park or gadget; the assistant answers
with one short sentence. Demonstrations mix positive, neutral and negative reviews, so a fine-tuned model
learns the format without a fixed opinion; later stages can then learn a preference (for instance for
warmer reviews) that anyone can see in the sample texts.

``python -m rlhf_lightning.data.synthetic OUT_DIR`` writes the files shipped in ``data/assets``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SUBJECTS = {
    "cafe": ["Blue Kettle", "Morning Owl", "Copper Cup", "The Daily Grind", "Little Fern", "Harbor Beans"],
    "book": ["The Quiet River", "Salt and Stars", "A Map of Tuesdays", "The Glass Orchard", "Northern Lights"],
    "film": ["Paper Moons", "The Last Ferry", "Iron Meadow", "Summer Static", "Midnight Garden"],
    "park": ["Willow Park", "Cedar Hill", "Riverside Green", "Old Mill Park", "Lakeview Commons"],
    "gadget": ["Pico Lamp", "Zen Kettle", "Orbit Speaker", "Nimbus Phone", "Echo Watch"],
}
ASPECTS = {  # singular nouns, so that "the {aspect} is ..." reads well
    "cafe": ["coffee", "service", "music", "menu", "seating", "bread"],
    "book": ["plot", "writing", "ending", "pacing", "dialogue", "cover"],
    "film": ["acting", "story", "soundtrack", "ending", "dialogue", "pacing"],
    "park": ["trail", "pond", "playground", "view", "shade", "lawn"],
    "gadget": ["battery", "design", "screen", "sound", "price", "charger"],
}
POSITIVE = ["wonderful", "delightful", "excellent", "lovely", "great", "charming", "superb", "friendly"]
NEGATIVE = ["disappointing", "dull", "awful", "bland", "poor", "tedious", "terrible", "annoying"]
NEUTRAL = ["ordinary", "average", "decent", "fine", "typical", "okay"]

REQUESTS = [
    "Write a one-sentence review of the {kind} {name}.",
    "Give me a short review of {name}, the {kind}.",
    "In one sentence, what do you think of the {kind} {name}?",
    "Review {name} (a {kind}) in a single sentence.",
]
TEMPLATES = {
    "positive": [
        "{name} is {a}, and the {x} is {b}.",
        "I found {name} {a}, with {b} {x} and {c} {y}.",
        "{name} has {a} {x} and {b} {y}; I would recommend it.",
    ],
    "neutral": [
        "{name} is {a}, with {b} {x} and {c} {y}.",
        "The {x} at {name} is {a}, and the {y} is {b}.",
        "{name} is {a} overall; the {x} is {b}.",
    ],
    "negative": [
        "{name} is {a}, and the {x} is {b}.",
        "I found {name} {a}, with {b} {x} and {c} {y}.",
        "{name} has {a} {x} and {b} {y}; I would skip it.",
    ],
}
WORDS = {"positive": POSITIVE, "neutral": NEUTRAL, "negative": NEGATIVE}


def _subjects(rng: random.Random):
    kind = rng.choice(sorted(SUBJECTS))
    return kind, rng.choice(SUBJECTS[kind])


def request(rng: random.Random) -> tuple[str, str, str]:
    """A (prompt text, kind, name) triple."""
    kind, name = _subjects(rng)
    return rng.choice(REQUESTS).format(kind=kind, name=name), kind, name


def review(rng: random.Random, kind: str, name: str, sentiment: str) -> str:
    x, y = rng.sample(ASPECTS[kind], 2)
    a, b, c = rng.sample(WORDS[sentiment], 3)
    text = rng.choice(TEMPLATES[sentiment]).format(name=name, x=x, y=y, a=a, b=b, c=c)
    return text[0].upper() + text[1:]


def demonstrations(n: int = 400, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, kind, name = request(rng)
        sentiment = rng.choice(["positive", "neutral", "negative"])
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": review(rng, kind, name, sentiment)},
                ]
            }
        )
    return rows


def gold_score(text: str) -> int:
    """The documented "gold" preference of this task: warmer reviews are better.

    Positive words count +1 and negative words -1 (word lists above); the neutral words count 0.
    """
    words = [w.strip(".,;:!?").lower() for w in text.split()]
    return sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)


def gold_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """:func:`gold_score` of each response, as a PPO reward or evaluation function
    (``rlhf_lightning.data.synthetic:gold_reward``)."""
    return [float(gold_score(r)) for r in responses]


def comparisons(n: int = 600, ranking_fraction: float = 0.2, seed: int = 1) -> list[dict]:
    """Pairs (and some 3-way rankings) of reviews of one subject, the warmer one preferred (:func:`gold_score`).

    Pairs are in the conversational explicit-prompt format; rankings list their responses in a shuffled
    order with an explicit ``ranking`` (1 = best), as a person ranking answers would.
    """
    rng = random.Random(seed)
    rows = []
    order = ["positive", "neutral", "negative"]
    for _ in range(n):
        prompt, kind, name = request(rng)
        user = [{"role": "user", "content": prompt}]
        if rng.random() < ranking_fraction:
            reviews = [review(rng, kind, name, sentiment) for sentiment in order]
            shuffled = rng.sample(range(3), 3)
            rows.append(
                {
                    "prompt": user,
                    "responses": [[{"role": "assistant", "content": reviews[i]}] for i in shuffled],
                    "ranking": [i + 1 for i in shuffled],
                }
            )
            continue
        better, worse = sorted(rng.sample(order, 2), key=order.index)
        chosen, rejected = review(rng, kind, name, better), review(rng, kind, name, worse)
        rows.append(
            {
                "prompt": user,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return rows


PROMPT_REQUESTS = REQUESTS + [
    "What would you say about the {kind} {name}, in one sentence?",
    "Sum up {name} (the {kind}) in a single sentence.",
    "Please write a one-line review of {name}, a {kind}.",
    "Describe the {kind} {name} in one short review sentence.",
]


def prompts(seed: int = 2) -> list[dict]:
    """Every distinct review request (8 phrasings x 26 subjects = 208), shuffled, in the conversational
    prompt format, for the PPO stage. No prompt repeats, so a held-out split is truly held out."""
    rows = [
        {"prompt": [{"role": "user", "content": template.format(kind=kind, name=name)}]}
        for template in PROMPT_REQUESTS
        for kind in sorted(SUBJECTS)
        for name in SUBJECTS[kind]
    ]
    random.Random(seed).shuffle(rows)
    return rows


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_assets(folder: Path) -> None:
    write_jsonl(demonstrations(), folder / "demonstrations.jsonl")
    write_jsonl(comparisons(), folder / "comparisons.jsonl")
    write_jsonl(prompts(), folder / "prompts.jsonl")


if __name__ == "__main__":
    write_assets(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "assets")
