"""What every development task shares: the :class:`Task` record and the measures its written rules are built from.

A development task is a family of prompts, the embedded model's own sampled answers to them, and a written rule
(``gold_parts``) that scores any answer; the rule labels the pairs the reward model learns from and is the gold
function PPO is evaluated with. The measures here are plain text statistics a person can check by hand.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import snowballstemmer

WORD = re.compile(r"\d+(?:[.,]\d+)+|[a-z0-9']+")
"""A word: a number with its decimal point or thousands separators (``5.5``, ``1,000``), or a run of lowercase
letters, digits and apostrophes (the text is lowercased first)."""

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
REFUSAL = re.compile(
    r"\bas an? (?:[a-z'-]+ ){0,3}(?:ai|chatbot|language model|assistant)\b"
    r"|\bi(?:'m| am) (?:just |only )?an? (?:[a-z'-]+ ){0,3}(?:ai|chatbot|language model)\b"
    r"|\bi(?:'m| am) not (?:designed|equipped|programmed) to\b"
    r"|\bi (?:do not|don't) have (?:personal|feelings|opinions)\b"
    r"|\bi(?: cannot|'m unable to| am unable to| can't| can not|'m not able to| am not able to)"
    r" (?:help(?! but)|assist|provide|answer|write|do that|comply|fulfil|fulfill|create|generate|give|offer)\b"
)
"""A refusal or an AI disclaimer ("As an AI", "as a text-based AI", "I'm a helpful AI", "I cannot help with",
"I'm not equipped to", "I don't have personal opinions"), lowercase. A plain "I'm sorry" (sympathy), "I cannot
sleep" (the person's own words) or "I can't help but smile" is none."""
NEGATION = re.compile(
    r"\b(?:not|never|no|don't|do not|doesn't|didn't|isn't|wasn't|aren't|won't)(?:\s+(?!be\b)[a-z']+)?\s+$"
)
"""A negation just before a marker, or one word before it ("not happy to", "don't really appreciate"). "Can't" is
none ("I can't thank you enough"), two words away is too far ("don't hesitate to let me know"), and a negated
command still says the word ("don't be lazy")."""
_OPENING_QUOTE = re.compile(r'(?:^|[\s(\[])"$')
_STEMMER = snowballstemmer.stemmer("english")
_UNDOUBLE = re.compile(r"(bb|dd|ff|gg|mm|nn|pp|rr|tt)$")


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


def stem(word: str) -> str:
    """A word's Snowball (Porter2) English stem with a final double consonant made single, cut to 5 characters:
    ``water``/``watering``, ``plant``/``plants``, ``egg``/``eggs``, ``yawn``/``yawning``, ``purr``/``purring``,
    ``dry``/``dries`` match. (Snowball: https://snowballstem.org/algorithms/english/stemmer.html.)"""
    return _UNDOUBLE.sub(lambda m: m.group(1)[0], _STEMMER.stemWord(word))[:5]


def stems(text: str) -> set[str]:
    """Content words of ``text`` as :func:`stem`\\ s: lowercase, 3+ letters, not a stop word; a possessive
    counts as its word (``dog's`` is ``dog``), and a contraction of function words is none (``what's``,
    ``don't``, ``i'm``)."""
    found = set()
    for w in words(text):
        if "'" in w:
            base, _, rest = w.partition("'")
            if rest != "s":
                continue
            w = base
        if len(w) >= 3 and w not in STOPWORDS:
            found.add(stem(w))
    return found


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


def echoes(prompt: str, response: str) -> bool:
    """Whether the response is the request repeated back: more than half of its word bigrams are the prompt's
    own (:func:`echoed_share`) and it adds no content word of its own (:func:`stems`). It answers nothing, on any
    task; a policy finds it quickly when a reward model scores it well."""
    return echoed_share(prompt, response) > 0.5 and stems(response) <= stems(prompt)


def ends_sentence(text: str) -> bool:
    """Whether the text ends a sentence: ``.``, ``!``, ``?``, a closing bracket or quote (trailing space
    ignored); a quote that opens (after a space, at the start, after a bracket) is cut off, not closed. An
    answer cut at the length limit usually does not end a sentence."""
    text = text.rstrip()
    return text.endswith((".", "!", "?", ")", '"')) and _OPENING_QUOTE.search(text) is None


def evasive(text: str) -> bool:
    """Whether the text holds a refusal or an AI disclaimer (:data:`REFUSAL`)."""
    return REFUSAL.search(text.lower().replace("\u2019", "'")) is not None


def markers(text: str, phrases: tuple[str, ...]) -> int:
    """How many of ``phrases`` (lowercase words or phrases, each form written out: ``"thanks"``, ``"thank you"``)
    the text uses as whole words, each counted once, and not negated: an occurrence with "not", "never", "don't",
    ... just before it or one word before it (:data:`NEGATION`) does not count. ``"hope"`` does not match "hopeless";
    ``"appreciate"`` does not count in "I don't appreciate"; ``"your fault"`` does not in "it's not your fault"."""
    lowered = text.lower().replace("\u2019", "'")
    found = 0
    for phrase in phrases:
        for match in re.finditer(rf"\b{re.escape(phrase)}\b", lowered):
            if not NEGATION.search(lowered[: match.start()]):
                found += 1
                break
    return found
