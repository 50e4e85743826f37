"""Degenerate answers: what a policy tries first when its reward model can be gamed.

A reward model learns from the answers people compared, and those are almost never empty, cut off, a copy
of the question or one phrase over and over. Nothing in the Bradley-Terry loss says how such answers should
score, and a policy optimised against the reward model finds them in a few iterations when they score well
(empty turns are the usual first find). The reward stage therefore scores these variants of held-out
answers after training and reports how often each beats the real chosen answer
(:meth:`rlhf_lightning.modules.reward.RewardModule.degenerate_check`).
"""

from __future__ import annotations

import json
from typing import Literal, get_args

DegenerateKind = Literal["empty", "cut_mid_sentence", "prompt_repeated", "phrase_repeated"]
DEGENERATE_KINDS: tuple[str, ...] = get_args(DegenerateKind)
EXPLOITED_KINDS = ("empty", "prompt_repeated")
"""The answers a policy finds first and keeps when they pay: nothing at all, and the request echoed back."""
EXPLOITED_LIMIT = 0.5
"""A reward model is flagged when one of :data:`EXPLOITED_KINDS` scores above the median real answer on more
than this share of the checked prompts."""


def exploitable(report: dict) -> dict[str, float]:
    """``{kind: share}`` for each of :data:`EXPLOITED_KINDS` that scores above the median real answer on more than
    :data:`EXPLOITED_LIMIT` of the prompts in a degenerate-answer check ``report`` (``{"kinds": {kind:
    {"above_median_real": share, ...}}}``, as the reward stage writes it); empty when none does."""
    kinds = report.get("kinds", {})
    return {
        kind: kinds[kind]["above_median_real"]
        for kind in EXPLOITED_KINDS
        if kinds.get(kind, {}).get("above_median_real", 0.0) > EXPLOITED_LIMIT
    }


def exploit_message(report: dict, flagged: dict[str, float], where: str) -> str:
    """One line for a flagged reward model (``where`` names it): the shares, and the fix."""
    shares = ", ".join(f"{kind.replace('_', ' ')} answer {100 * share:.0f}%" for kind, share in flagged.items())
    return (
        f"the reward model {where} scores a degenerate answer above the median real answer on most of the "
        f"{report['prompts']} {report['split']} prompts it checked ({shares}): PPO against it would learn to "
        f"answer that way. To fix: retrain the reward stage with data.init_args.rejected_variants: "
        f"{json.dumps(sorted(flagged))}, or give it more comparisons (docs/reward.md#degenerate-answers)"
    )


def response_text(response: str | list[dict]) -> str:
    """The text of a response: the string, or the content of its last assistant message."""
    if isinstance(response, str):
        return response
    return [m for m in response if m["role"] == "assistant"][-1]["content"]


def prompt_text(prompt: str | list[dict]) -> str:
    """The request of a prompt: the string, or the content of its last user message (the last message of any
    role when there is none)."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt if m["role"] == "user"]
    return (users or prompt)[-1]["content"]


def as_response(text: str, like: str | list[dict]) -> str | list[dict]:
    """``text`` in the form of ``like``: a string, or one assistant message."""
    return text if isinstance(like, str) else [{"role": "assistant", "content": text}]


def degenerate_answers(prompt: str | list[dict], answer: str | list[dict]) -> dict[str, str]:
    """Degenerate variants of ``answer`` (a real answer to ``prompt``), as texts:

    - ``empty``: nothing (scored as the prompt followed by the stop token, as a policy's empty turn);
    - ``cut_mid_sentence``: the first half of its words, without closing punctuation;
    - ``prompt_repeated``: the request itself, as the answer;
    - ``phrase_repeated``: its first three words repeated to its length (at least three times).
    """
    words = response_text(answer).split()
    half = " ".join(words[: max(1, len(words) // 2)]).rstrip(".!?,;:")
    phrase = words[:3] or ["ok"]
    repeats = max(3, len(words) // len(phrase))
    return {
        "empty": "",
        "cut_mid_sentence": half,
        "prompt_repeated": prompt_text(prompt).strip(),
        "phrase_repeated": " ".join(phrase * repeats),
    }


def has_prompt(prompt: str | list | None) -> bool:
    """Whether a comparison row has a prompt another answer can be given to."""
    return bool(prompt) and (not isinstance(prompt, str) or bool(prompt.strip()))


def best_response(pairs: list[tuple[int, int]]) -> int:
    """The index of a prompt's best response: the most often preferred, net of the times it lost (the first
    such on ties): ``chosen`` for a pair, rank 1 for a ranking."""
    net: dict[int, int] = {}
    for better, worse in pairs:
        net[better] = net.get(better, 0) + 1
        net[worse] = net.get(worse, 0) - 1
    return max(sorted(net), key=lambda i: net[i])
