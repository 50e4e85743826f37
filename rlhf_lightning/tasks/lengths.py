"""A development task whose rule is about length: an answer as long as the prompt asked for, no longer, no shorter.

- **Prompts**: 45 questions ("Why do cats purr?", "How does a bicycle stay upright?", ...), each asked five times
  with a different length request: one, two or three sentences, under 15 words, or about 50 words; the request
  before or after the question. 225 prompts; 45 are held out (seeded). A held-out prompt can share its question
  with a training prompt, never its length request.
- **Rule**: :func:`gold_parts`. Files: ``python -m rlhf_lightning.tasks.generate lengths``.
"""

from __future__ import annotations

import random
import re

from rlhf_lightning.tasks.base import Task, coverage, echoes, ends_sentence, repeated_share, words

QUESTIONS = (
    "Why do cats purr?", "How does a bicycle stay upright?", "What makes bread rise?", "Why is the sky blue?",
    "How do bees make honey?", "What causes the seasons?", "Why do leaves change colour in autumn?",
    "How does a refrigerator keep food cold?", "What is a rainbow?", "Why do we need sleep?",
    "How do plants get water from the soil?", "What does a compass point to?", "Why does ice float on water?",
    "How does a vaccine work?", "What is compound interest?", "Why do onions make you cry?",
    "How do birds know where to migrate?", "What is the difference between weather and climate?",
    "Why does bread go stale?", "How does a microwave heat food?", "What is a budget and why keep one?",
    "Why do we have tides?", "How does recycling paper work?", "What makes a good night's sleep?",
    "Why should you stretch before exercise?", "How do solar panels make electricity?", "What is a fever?",
    "Why do dogs wag their tails?", "How does soap clean your hands?", "What is photosynthesis?",
    "Why do we get hiccups?", "How do you know when pasta is cooked?", "What is an earthquake?",
    "Why do stars twinkle?", "How does a savings account earn money?", "What is the purpose of a resume?",
    "Why is exercise good for the heart?", "How do you care for a cactus?", "What causes thunder?",
    "Why do we yawn?", "How does a thermometer work?", "What is a healthy breakfast?",
    "Why do cities feel warmer than the countryside?", "How do fish breathe under water?",
    "What is the best way to learn a new word?",
)  # fmt: skip
LENGTHS = (
    ("sentences", 1, "in one sentence"),
    ("sentences", 2, "in two sentences"),
    ("sentences", 3, "in three sentences"),
    ("under", 15, "in under 15 words"),
    ("about", 50, "in about 50 words"),
)
"""``(kind, target, words of the request)``: a number of sentences, a word limit, or a word count to aim for."""
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)")
_LIST_MARKER = re.compile(r"^\s*(?:\d+|[a-zA-Z])[.)]\s+", re.MULTILINE)
_LAST_WORD = re.compile(r"[\w.]*$")
_NEXT_INITIAL = re.compile(r"\s+[A-Z]\.")
_PREVIOUS_INITIAL = re.compile(r"(?:^|\s)[A-Z]\.\s+$")
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "vs", "approx", "st", "cf", "fig"})
"""Words whose full stop does not end a sentence (lowercase, without the stop); nor do dotted abbreviations
(``e.g.``, ``U.S.``) or initials (``J. K.``)."""
_NUMBERS = {"one": 1, "two": 2, "three": 3}


def make_prompts(seed: int = 0) -> tuple[str, ...]:
    """Each question with each length request, the request before it ("In two sentences, why ...?") or after it
    ("... Answer in two sentences."), drawn with ``seed``; in question order."""
    rng = random.Random(seed)
    prompts = []
    for question in QUESTIONS:
        for _, _, request in LENGTHS:
            if rng.random() < 0.5:
                prompts.append(f"{request.capitalize()}, {question[0].lower()}{question[1:]}")
            else:
                prompts.append(f"{question} Answer {request}.")
    return tuple(prompts)


def asked_length(prompt: str) -> tuple[str, int, str]:
    """The length request in the prompt: ``(kind, target, the question without the request)``."""
    lowered = prompt.lower()
    for kind, target, request in LENGTHS:
        if request in lowered:
            start = lowered.index(request)
            question = (prompt[:start] + prompt[start + len(request) :]).replace("Answer .", "").strip(" ,")
            return kind, target, question
    raise ValueError(f"no length request ({', '.join(r for _, _, r in LENGTHS)}) in the prompt {prompt!r}")


def sentence_count(text: str) -> int:
    """Sentences in the text: runs of ``.``, ``!`` or ``?`` (with any closing quote or bracket) before a space or
    the end, plus one for trailing words with no end mark. A list marker at the start of a line (``1.``, ``b)``)
    is not a sentence end, nor, before more text, is the stop of an abbreviation (:data:`ABBREVIATIONS`), of a
    dotted abbreviation (``e.g.``) or of an initial next to another (``J. K. Rowling``); a number's stop is
    (``... in 1990.``, ``38.5.``), and so is a capital's (``vitamin C.``); a decimal point is not (``5.5``)."""
    text = _LIST_MARKER.sub("", text.strip())
    count, last = 0, 0
    for end in _SENTENCE_END.finditer(text):
        before = _LAST_WORD.search(text, 0, end.start()).group(0)
        dotted = "." in before and any(c.isalpha() for c in before)
        initial = (
            len(before) == 1
            and before.isupper()
            and (_NEXT_INITIAL.match(text, end.end()) is not None or _PREVIOUS_INITIAL.search(text, 0, end.start() - 1))
        )
        abbreviation = before.lower() in ABBREVIATIONS or dotted or initial
        if end.group(0) == "." and abbreviation and text[end.end() :].strip():
            continue
        count, last = count + 1, end.end()
    return count + (1 if words(text[last:]) else 0)


def gold_parts(prompt: str, response: str) -> dict[str, float]:
    """The task's true preference: an answer of the length the prompt asks for, on its question, finished. Each part of
    one answer's score (:func:`gold_score` is their sum):

    - ``length``: for "in N sentences", 2 minus 1 per sentence more or fewer; for "in under 15 words", 2 up to
      15 words, then 2 less per 15 words beyond; for "in about 50 words", 2 minus 2 x the relative distance
      from 50 words; down to -2 in each case;
    - ``relevance``: the share of the question's content words (stop words removed, 5-letter stems) the answer
      uses, in [0, 1];
    - ``finished``: +0.5 when the answer ends a sentence, else -0.5;
    - ``repetition``: -3 x the share of repeated word bigrams;
    - ``echo``: -3 for the request repeated back (:func:`~rlhf_lightning.tasks.base.echoes`), as in every task;
    - ``too_short``: -1 under 3 words.

    An empty answer scores -3. Range about [-6.5, 3.5].
    """
    tokens = words(response)
    if not tokens:
        return {"empty": -3.0}
    kind, target, question = asked_length(prompt)
    if kind == "sentences":
        length = 2.0 - 1.0 * abs(sentence_count(response) - target)
    elif kind == "under":
        length = 2.0 - 2.0 * max(0, len(tokens) - target) / target
    else:
        length = 2.0 - 2.0 * abs(len(tokens) - target) / target
    return {
        "length": max(-2.0, length),
        "relevance": 1.0 * coverage(question, response),
        "finished": 0.5 if ends_sentence(response) else -0.5,
        "repetition": -3.0 * repeated_share(tokens),
        "echo": -3.0 if echoes(prompt, response) else 0.0,
        "too_short": -1.0 if len(tokens) < 3 else 0.0,
    }


TASK = Task("lengths", "length: as long as asked", make_prompts(), 45, gold_parts)
gold_score = TASK.gold_score
"""``(prompt, response) -> float``: the rule's score of one answer (the sum of :func:`gold_parts`)."""
gold_reward = TASK.gold_reward
"""``(prompts, responses) -> scores``: the rule per answer, PPO's gold function
(``rlhf_lightning.tasks.lengths:gold_reward``)."""
