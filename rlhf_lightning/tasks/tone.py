"""A development task whose rule is about tone: a message that is polite, warm and speaks to the person, never harsh.

- **Prompts**: 45 situations that call for a message, many of them awkward ("a neighbour whose dog barks every
  night", "a customer whose order arrived broken"), each asked five ways ("Write a short message to ...",
  "What should I say to ...?", ...). 225 prompts; 45 are held out (seeded). A held-out prompt can share its
  situation with a training prompt, never its wording.
- **Rule**: :func:`gold_parts`. Files: ``python -m rlhf_lightning.tasks.generate tone``.
"""

from __future__ import annotations

import re

from rlhf_lightning.tasks.base import Task, echoes, ends_sentence, evasive, markers, repeated_share, words

SITUATIONS = (
    "my neighbour whose dog barks every night", "a coworker who missed our project deadline",
    "a customer whose order arrived broken", "my landlord about a heater that has been broken for a week",
    "a friend who cancelled dinner at the last minute", "my manager to ask for a day off",
    "a teacher about my son's missing homework", "a team after our project failed",
    "a neighbour who parks in front of my garage", "a friend who forgot my birthday",
    "a client who has not paid an invoice for two months", "a new colleague on their first day",
    "a restaurant that got my order wrong", "my sister after we had an argument",
    "a volunteer who helped at our school fair", "a flatmate who leaves dishes in the sink",
    "a plumber who came late and left a mess", "a student who failed an exam",
    "a friend who lent me money last month", "a hotel about a noisy room",
    "a colleague who keeps interrupting me in meetings", "a neighbour who plays loud music late",
    "a customer who wants a refund after thirty days", "an old friend I have not spoken to in years",
    "a doctor's office to move my appointment", "a coach whose team lost the final",
    "a shop that sent me the wrong size", "my team to announce a delay",
    "a parent whose child was rude to mine", "a friend whose cat died",
    "a seller who never replied to my questions", "my boss after I made a mistake in a report",
    "a guest who broke a glass at my party", "a colleague who took credit for my work",
    "a tenant who pays the rent late every month", "a friend who did not invite me to a wedding",
    "a delivery driver who left a parcel in the rain", "a new neighbour who just moved in",
    "a group chat that keeps messaging late at night", "a café owner who was kind to my grandmother",
    "a classmate who copied my homework", "an airline that lost my suitcase",
    "a mentor who helped me find a job", "a cyclist who nearly hit me on the pavement",
    "a partner who forgot to pick me up",
)  # fmt: skip
TEMPLATES = (
    "Write a short message to {s}.",
    "Help me reply to {s}.",
    "What should I say to {s}?",
    "Draft a note to {s}.",
    "Write a text message to {s}.",
)
COURTESY = ("please", "thank you", "thanks", "thankful", "appreciate", "appreciated", "sorry", "apologise",
            "apologize", "apologies", "understand", "hope", "hoping", "glad", "happy to", "grateful", "kindly",
            "would you mind", "could you", "let me know", "no worries")  # fmt: skip
"""Courtesy markers (lowercase; whole words, each counted once per message, not when negated: :func:`markers`)."""
HARSH = ("unacceptable", "ridiculous", "stupid", "lazy", "useless", "your fault", "demand",
         "annoying", "terrible", "disgusting", "incompetent", "shut up", "how dare", "idiot", "fed up",
         "disappointed in you", "or else")  # fmt: skip
"""Harsh markers (lowercase; whole words, each counted once per message, not when negated: "it's not your
fault" is kind). "Immediately" is none: in the model's messages it is mostly "I immediately checked"."""
_SHOUTED = re.compile(r"\b[A-Z]{2,}(?:[\s,.!?]+[A-Z]{2,})+\b|!!")
"""Shouting: two or more words in capitals in a row ("PLEASE STOP", "SEND IT NOW"), or ``!!``. One capitalised
word is usually an acronym (SPCA, ASAP, CEO), not a raised voice; a placeholder in brackets ("[YOUR NAME]") and a
time ("9 AM EST") are none. Two acronyms in a row ("the CEO ASAP") count, a known limit of the rule."""
_PLACEHOLDER = re.compile(r"\[[^\]]*\]")
_NOT_SHOUTED = re.compile(rf"{_PLACEHOLDER.pattern}|\b\d{{1,2}}(?::\d\d)?\s*[AP]M(?:\s+[A-Z]{{2,4}}T)?\b")
ADDRESS = frozenset({"you", "your", "yours", "yourself", "you're", "you'll", "you've", "you'd"})


def signed_off(text: str) -> bool:
    """Whether the message ends with a sign-off: a last line of at most 4 words (a name) after a line of at most
    4 words ending in a comma ("Best regards,"), or a placeholder in brackets ("[Your Name]")."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines and _PLACEHOLDER.fullmatch(lines[-1]):
        return True
    return len(lines) >= 2 and len(lines[-1].split()) <= 4 and lines[-2].endswith(",") and len(lines[-2].split()) <= 4


def gold_parts(prompt: str, response: str) -> dict[str, float]:
    """The task's true preference: a short message that is courteous, speaks to the person and is never harsh. Each part
    of one answer's score (:func:`gold_score` is their sum):

    - ``courtesy``: +0.5 per distinct courtesy marker (:data:`COURTESY`: "please", "thank", "sorry",
      "understand", "hope", ...), up to +1.5;
    - ``harsh``: -1 per distinct harsh marker (:data:`HARSH`: "unacceptable", "your fault", "immediately", ...),
      down to -2;
    - ``shouting``: -1 for two or more words in capitals in a row, or ``!!`` (:data:`_SHOUTED`; not in
      brackets or a time);
    - ``addressed``: +0.5 when the message says "you", "your", "you're", ... (:data:`ADDRESS`; not in a
      placeholder such as "[Your Name]");
    - ``length``: 0 up to 80 words, then -1 per 60 words beyond, down to -1.5;
    - ``finished``: +0.5 when the message ends a sentence or a sign-off (:func:`signed_off`), else -0.5;
    - ``repetition``: -3 x the share of repeated word bigrams;
    - ``echo``: -3 for the request repeated back (:func:`~rlhf_lightning.tasks.base.echoes`), as in every task;
    - ``refusal``: -1 for a refusal or an AI disclaimer ("As an AI", "I cannot help with", ...:
      :func:`~rlhf_lightning.tasks.base.evasive`);
    - ``too_short``: -1 under 3 words.

    An empty answer scores -3. Range about [-10, 2.5].
    """
    tokens = words(response)
    if not tokens:
        return {"empty": -3.0}
    return {
        "courtesy": min(1.5, 0.5 * markers(response, COURTESY)),
        "harsh": -min(2.0, 1.0 * markers(response, HARSH)),
        "shouting": -1.0 if _SHOUTED.search(_NOT_SHOUTED.sub(" ", response)) else 0.0,
        "addressed": 0.5 if ADDRESS & set(words(_PLACEHOLDER.sub(" ", response))) else 0.0,
        "length": -min(1.5, max(0, len(tokens) - 80) / 60),
        "finished": 0.5 if ends_sentence(response) or signed_off(response) else -0.5,
        "repetition": -3.0 * repeated_share(tokens),
        "echo": -3.0 if echoes(prompt, response) else 0.0,
        "refusal": -1.0 if evasive(response) else 0.0,
        "too_short": -1.0 if len(tokens) < 3 else 0.0,
    }


TASK = Task("tone", "tone: courteous, never harsh", tuple(t.format(s=s) for s in SITUATIONS for t in TEMPLATES), 45,
            gold_parts)  # fmt: skip
gold_score = TASK.gold_score
"""``(prompt, response) -> float``: the rule's score of one answer (the sum of :func:`gold_parts`)."""
gold_reward = TASK.gold_reward
"""``(prompts, responses) -> scores``: the rule per answer, PPO's gold function
(``rlhf_lightning.tasks.tone:gold_reward``)."""
