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
- **Labels**: :func:`gold_parts`, a fixed rule a person can check on any answer (below). For each request
  the best and the worst answer by the rule form a ``{prompt, chosen, rejected}`` pair in the standard text
  format (pairs whose scores differ by less than 0.5 are left out as too close to call).

Its files are written by ``python -m rlhf_lightning.tasks.generate everyday`` (:mod:`rlhf_lightning.tasks.generate`).
"""

from __future__ import annotations

import re
from pathlib import Path

from rlhf_lightning.tasks.base import (
    Task,
    coverage,
    echoes,
    ends_sentence,
    evasive,
    repeated_share,
    words,
)

REQUESTS_FILE = Path(__file__).resolve().parents[1] / "data" / "assets" / "everyday_requests.txt"
HELDOUT_REQUESTS = 60

_BREVITY = re.compile(r"\b(brief|briefly|short(?! story)|quick(?! question)|one sentence|a sentence|"
                      r"single sentence|one line|few words|one idea|one tip|one word|in a word|concise|"
                      r"sentence or two)\b", re.IGNORECASE)  # fmt: skip


def gold_parts(prompt: str, response: str) -> dict[str, float]:
    """The task's true preference: an answer that addresses the request's specifics, at the length asked for, finished,
    without repeating itself or evading. Each part of one answer's score (:func:`gold_score` is their sum):

    - ``relevance``: 2 x the fraction of the request's content words (stop words removed, 5-character stems)
      that the answer uses, in [0, 2];
    - ``length``: 0 up to a target of 30 words when the request asks for brevity ("briefly", "in a sentence",
      "quick tip", ...) and 60 otherwise, then -1 per target length beyond it, down to -2;
    - ``finished``: +0.5 when the answer ends a sentence (``.``, ``!``, ``?``, a closing bracket or quote),
      else -0.5 (cut off at the length limit or mid-thought);
    - ``repetition``: -3 x the share of repeated word bigrams;
    - ``echo``: -3 when more than half of the answer's word bigrams are the request's own and it adds no content
      word of its own (:func:`~rlhf_lightning.tasks.base.echoes`: the question repeated back uses every content
      word of the request, and answers nothing);
    - ``evasive``: -1 for a refusal or an AI disclaimer ("As an AI", "I cannot help with", ...:
      :func:`~rlhf_lightning.tasks.base.evasive`; a plain "I'm sorry" is none);
    - ``too_short``: -1 under 3 words.

    An empty answer scores -3. Range about [-10, 2.5].
    """
    tokens = words(response)
    if not tokens:
        return {"empty": -3.0}
    target = 30 if _BREVITY.search(prompt) else 60
    return {
        "relevance": 2.0 * coverage(prompt, response),
        "echo": -3.0 if echoes(prompt, response) else 0.0,
        "length": -min(2.0, max(0, len(tokens) - target) / target),
        "finished": 0.5 if ends_sentence(response) else -0.5,
        "repetition": -3.0 * repeated_share(tokens),
        "evasive": -1.0 if evasive(response) else 0.0,
        "too_short": -1.0 if len(tokens) < 3 else 0.0,
    }


def read_requests(path: Path = REQUESTS_FILE) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


TASK = Task("everyday", "relevance and specifics", tuple(read_requests()), HELDOUT_REQUESTS, gold_parts)
gold_score = TASK.gold_score
"""``(prompt, response) -> float``: the rule's score of one answer (the sum of :func:`gold_parts`)."""
gold_reward = TASK.gold_reward
"""``(prompts, responses) -> scores``: the rule per answer, PPO's gold function
(``rlhf_lightning.tasks.everyday:gold_reward``)."""
