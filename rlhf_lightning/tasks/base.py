"""What every development task shares: the :class:`Task` record and the measures its written rules are built from.

A development task is a family of prompts, the embedded model's own sampled answers to them, and a written rule
(``gold_parts``) that scores any answer; the rule labels the pairs the reward model learns from and is the gold
function PPO is evaluated with. The measures here are plain text statistics a person can check by hand.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

WORD = re.compile(r"[a-z0-9']+")
"""A word: lowercase letters, digits and apostrophes (the text is lowercased first)."""

STOPWORDS = frozenset(
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
EVASIVE = ("as an ai", "i'm sorry", "i am sorry", "i cannot", "i can't help", "i don't have personal",
           "i do not have personal", "i'm not able to", "i am not able to")  # fmt: skip
"""Phrases of a refusal or a disclaimer (lowercase)."""


@dataclass(frozen=True)
class Task:
    """One development task.

    Attributes:
        name: the prefix of its files (``builtin:{name}_comparisons.jsonl``) and its module
            (``rlhf_lightning.tasks.{name}:gold_reward``).
        rule: the kind of preference its rule encodes, in a few words (for tables).
        prompts: every prompt of the task, in a fixed order (the held-out ones are drawn from them).
        heldout: how many prompts are held out, drawn with the seed.
        gold_parts: ``(prompt, response) -> {part: value}``; the rule's score is the sum of the parts.
    """

    name: str
    rule: str
    prompts: tuple[str, ...]
    heldout: int
    gold_parts: Callable[[str, str], dict[str, float]]

    def gold_score(self, prompt: str, response: str) -> float:
        """The rule's score of one answer: the sum of :attr:`gold_parts`, rounded to 4 decimals."""
        return round(sum(self.gold_parts(prompt, response).values()), 4)

    def gold_reward(self, prompts: list[str], responses: list[str]) -> list[float]:
        """:meth:`gold_score` per ``(prompt, response)``: a PPO reward or gold function
        (``rlhf_lightning.tasks.NAME:gold_reward``)."""
        return [self.gold_score(p, r) for p, r in zip(prompts, responses)]


def words(text: str) -> list[str]:
    """The words of ``text`` (:data:`WORD`), lowercased."""
    return WORD.findall(text.lower())


def stems(text: str) -> set[str]:
    """Content words of ``text`` (lowercase, 3+ letters, not a stop word), cut to 5 characters so that
    ``water``/``watering`` and ``plant``/``plants`` match."""
    return {w[:5] for w in words(text) if len(w) >= 3 and w not in STOPWORDS}


def coverage(prompt: str, response: str) -> float:
    """The share of the prompt's content stems (:func:`stems`) that the response uses, in [0, 1]; 1 when the
    prompt has none."""
    topic = stems(prompt)
    return len(topic & stems(response)) / len(topic) if topic else 1.0


def repeated_share(tokens: list[str]) -> float:
    """The share of repeated word bigrams in ``tokens``: ``1 - distinct / all``, 0 for fewer than two words."""
    bigrams = list(zip(tokens, tokens[1:]))
    return 1 - len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def echoed_share(prompt: str, response: str) -> float:
    """The share of the response's word bigrams that are the prompt's own (the question repeated back)."""
    answer, request = words(response), words(prompt)
    bigrams = list(zip(answer, answer[1:]))
    own = set(zip(request, request[1:]))
    return sum(b in own for b in bigrams) / len(bigrams) if bigrams else 0.0


def ends_sentence(text: str) -> bool:
    """Whether the text ends a sentence: ``.``, ``!``, ``?``, a closing bracket or quote (trailing space
    ignored). An answer cut at the length limit usually does not."""
    return text.rstrip().endswith((".", "!", "?", ")", '"'))


def evasive(text: str) -> bool:
    """Whether the text holds a refusal or disclaimer phrase (:data:`EVASIVE`)."""
    lowered = text.lower()
    return any(p in lowered for p in EVASIVE)
