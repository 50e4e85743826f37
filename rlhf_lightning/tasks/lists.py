"""A development task whose rule is about format: a list with exactly the number of items asked for.

- **Prompts**: 75 subjects ("ways to save water at home", "fruits high in vitamin C", ...), each asked three
  times with a different template ("List three ...", "Give me 4 ..., as a numbered list.", "What are five ...?")
  and a different count from two to five, 225 prompts in all; 45 are held out (seeded). A held-out prompt can
  share its subject with a training prompt, never its wording and count.
- **Rule**: :func:`gold_parts`. Files: ``python -m rlhf_lightning.tasks.generate lists``.
"""

from __future__ import annotations

import random
import re

from rlhf_lightning.tasks.base import Task, echoes, repeated_share, words

SUBJECTS = (
    "ways to save water at home", "fruits that are high in vitamin C", "tips for a first job interview",
    "games to play on a rainy day", "things to pack for a beach trip", "healthy breakfast ideas",
    "reasons to learn a second language", "houseplants that need little light",
    "exercises you can do without equipment",
    "ways to calm down before an exam", "vegetables that grow well in pots", "habits that help you sleep better",
    "ways to make a small room look bigger", "questions to ask a new doctor", "cheap hobbies for students",
    "things to check before buying a used car", "ways to keep a cat entertained", "snacks for a long hike",
    "ways to reduce food waste", "safety tips for cycling in a city", "board games for a family evening",
    "ways to remember new vocabulary", "things to do in a city on a rainy afternoon", "ingredients for a simple soup",
    "signs that a plant needs more water", "ways to stay focused while working from home",
    "things every first aid kit should have", "ways to cut the cost of groceries", "birds you might see in a garden",
    "tips for taking better phone photos", "things to bring to a picnic",
    "ways to cool a room without air conditioning",
    "skills every cook should learn", "ways to make a long flight more comfortable", "kinds of tea and their taste",
    "ways to be a good listener", "tips for writing a clear email", "things to do before a long drive",
    "ways to help a shy child make friends", "stretches for a stiff back", "uses for baking soda around the house",
    "ways to save energy in winter", "ideas for a birthday present under ten dollars", "rules for keeping a tidy desk",
    "tips for running your first 5 km", "things to know before adopting a dog", "ways to practise a musical instrument",
    "spices that go well with chicken", "ways to protect your passwords", "things to look for when renting a flat",
    "ideas for a quick weekday dinner", "ways to encourage bees in a garden", "tips for public speaking",
    "things to do when you cannot sleep", "ways to keep bread fresh", "facts about the moon",
    "planets in our solar system",
    "ways to reuse glass jars", "tips for learning to swim as an adult", "ways to thank a teacher",
    "things to do with leftover rice", "ways to keep children busy on a train", "herbs that are easy to grow",
    "tips for a tidy wardrobe", "ways to make friends in a new town", "parts of a bicycle to check before a ride",
    "ways to drink more water during the day", "tips for painting a wall", "things that attract ants into a kitchen",
    "ways to start a conversation with a stranger", "signs of a healthy lawn", "things to write in a thank-you card",
    "ways to protect your skin from the sun", "tips for studying with a friend", "animals that live in the desert",
)  # fmt: skip
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}
TEMPLATES = (
    "List {n} {subject}.",
    "Give me {n} {subject}, as a numbered list.",
    "What are {n} {subject}?",
    "Name {n} {subject}.",
    "Suggest {n} {subject}. Keep each one short.",
)
_ASKED = re.compile(r"\b(two|three|four|five|[2-5])\b")
_ITEM = re.compile(
    r"^(\s*)(?:#{1,6}\s*)?(?:\*\*|__)?"  # indentation, a Markdown heading or bold around the marker
    r"(?:(?P<number>\d+)[.)](?!\d)(?:\*\*|__)?\s*"  # 1. 1) **1.** 1.x (not 1.5)
    r"|(?P<roman>[ivx]+|[IVX]+)[.)](?:\*\*|__)?\s+"  # i. II)
    r"|(?P<letter>[a-zA-Z])[.)](?:\*\*|__)?\s+"  # a) B.
    r"|[-*\u2022]\s+)\S"  # - * •
)
_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "v": 5, "vi": 6, "vii": 7, "viii": 8, "ix": 9, "x": 10}


def make_prompts(seed: int = 0) -> tuple[str, ...]:
    """Each subject three times: three different templates, counts from 2 to 5 (half as words, half as
    digits), drawn with ``seed``; in subject order."""
    rng = random.Random(seed)
    prompts = []
    for subject in SUBJECTS:
        for template in rng.sample(TEMPLATES, 3):
            n = rng.randint(2, 5)
            prompts.append(template.format(n=NUMBER_WORDS[n] if rng.random() < 0.5 else n, subject=subject))
    return tuple(prompts)


def asked_count(prompt: str) -> int:
    """The number of items the prompt asks for (its first count, a word or a digit from 2 to 5)."""
    found = _ASKED.search(prompt.lower())
    if found is None:
        raise ValueError(f"no count from two to five in the prompt {prompt!r}")
    token = found.group(1)
    return int(token) if token.isdigit() else {v: k for k, v in NUMBER_WORDS.items()}[token]


def _marker(match: re.Match) -> tuple[str, int | None]:
    """``(kind, position)`` of a list marker: ``("number", 3)`` for ``3.``, ``("letter", 2)`` for ``b)`` and
    ``("letter", 2)`` for ``II.`` (a Roman numeral, when it is one), ``("bullet", None)`` for ``-``."""
    if match.group("number"):
        return "number", int(match.group("number"))
    if match.group("roman") and match.group("roman").lower() in _ROMAN:
        return "letter", _ROMAN[match.group("roman").lower()]
    if match.group("letter") or match.group("roman"):
        return "letter", ord((match.group("letter") or match.group("roman")[0]).lower()) - ord("a") + 1
    return "bullet", None


def list_items(response: str) -> list[tuple[int | None, str]]:
    """The top-level list items of the response, ``(position, line)``: the lines numbered ``1.``, ``1)``,
    ``**1.**``, ``1.x`` at the smallest indentation of such lines; when no line is numbered, the lines marked with
    a letter or a Roman numeral (``a)``, ``B.``, ``ii.``; position 2 for ``b`` and ``ii``); when neither, the
    lines that start with ``-``, ``*`` or ``•`` (position ``None``). Points under numbered items (bullets or
    letters, indented or not) and deeper lines are not items."""
    found = {"number": [], "letter": [], "bullet": []}
    for line in response.splitlines():
        if match := _ITEM.match(line):
            kind, position = _marker(match)
            found[kind].append((len(match.group(1)), position, line))
    items = found["number"] or found["letter"] or found["bullet"]
    if not items:
        return []
    top = min(indent for indent, _, _ in items)
    return [(position, line) for indent, position, line in items if indent == top]


def gold_parts(prompt: str, response: str) -> dict[str, float]:
    """The task's true preference: a list with exactly the number of items asked for, numbered, each item short, with
    little text around it. Each part of one answer's score (:func:`gold_score` is their sum):

    - ``count``: 2 when the answer's top-level list items (:func:`list_items`: the numbered lines, or the
      bulleted ones when none is numbered) number exactly what the prompt asks for, 0.75 less per item too
      many or too few, down to -1.5; -1.5 when the answer has no list at all;
    - ``numbered``: +0.5 when the items are numbered (or lettered) 1, 2, 3, ... in order;
    - ``concise``: -1 x the share of items longer than 25 words;
    - ``length``: 0 up to ``15 x asked + 20`` words, then -1 per 40 words beyond, down to -1.5;
    - ``repetition``: -3 x the share of repeated word bigrams.

    An empty answer scores -3. Range about [-6, 2.5].
    """
    tokens = words(response)
    if not tokens:
        return {"empty": -3.0}
    asked = asked_count(prompt)
    items = list_items(response)
    numbers = [number for number, _ in items]
    long_items = sum(len(words(line)) > 25 for _, line in items)
    return {
        "count": max(-1.5, 2.0 - 0.75 * abs(len(items) - asked)) if items else -1.5,
        "numbered": 0.5 if items and numbers == list(range(1, len(items) + 1)) else 0.0,
        "concise": -1.0 * long_items / len(items) if items else 0.0,
        "length": -min(1.5, max(0, len(tokens) - 15 * asked - 20) / 40),
        "repetition": -3.0 * repeated_share(tokens),
        "echo": -3.0 if echoes(prompt, response) else 0.0,
    }


TASK = Task("lists", "format: the list asked for", make_prompts(), 45, gold_parts)
gold_score = TASK.gold_score
"""``(prompt, response) -> float``: the rule's score of one answer (the sum of :func:`gold_parts`)."""
gold_reward = TASK.gold_reward
"""``(prompts, responses) -> scores``: the rule per answer, PPO's gold function
(``rlhf_lightning.tasks.lists:gold_reward``)."""
