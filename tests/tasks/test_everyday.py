"""The everyday development task: its rule by hand (the shipped files: tests/tasks/test_tasks.py)."""

import pytest

from rlhf_lightning.tasks.everyday import TASK, gold_parts, gold_reward, gold_score, read_requests

BASIL = "How do I keep basil alive on a windowsill? Quick tip please."  # content: keep basil alive windowsill


def test_the_rule_by_hand():
    on_topic = "Keep the basil on a sunny windowsill and water it when the soil feels dry."
    parts = gold_parts(BASIL, on_topic)
    # the request's content stems: keep, basil, alive, windo(wsill) -> the answer uses keep, basil, windo: 3/4
    assert parts["relevance"] == pytest.approx(2 * 3 / 4)
    assert parts["length"] == 0.0 and parts["finished"] == 0.5  # 15 words, under the brevity target of 30
    assert parts["repetition"] == 0.0 and parts["evasive"] == 0.0 and parts["too_short"] == 0.0
    assert parts["echo"] == 0.0  # none of its word pairs is the request's
    assert gold_score(BASIL, on_topic) == pytest.approx(2.0)
    # 90 words with the request asking for brevity: 60 over the target of 30 -> -2 (the floor)
    rambling = " ".join(["Basil likes light and warm air"] * 15)
    assert gold_parts(BASIL, rambling)["length"] == -2.0
    assert gold_parts(BASIL, rambling)["repetition"] == pytest.approx(-3 * (1 - 6 / 89))  # 6 distinct of 89 bigrams
    assert gold_parts(BASIL, "Keep the basil alive and")["finished"] == -0.5  # cut mid-sentence
    assert gold_parts(BASIL, "I'm sorry, I cannot help with basil.")["evasive"] == -1.0
    assert gold_parts(BASIL, "As an AI, I don't have personal plants.")["evasive"] == -1.0
    # sympathy, or "cannot" about something else, is no refusal
    assert gold_parts(BASIL, "I'm sorry it keeps wilting; basil cannot take cold glass.")["evasive"] == 0.0
    # plurals match their singular: the request's long, boil, egg; the answer's boil, eggs
    assert gold_parts("How long do I boil an egg?", "Boil eggs for nine minutes.")["relevance"] == 2 * 2 / 3
    assert gold_parts(BASIL, "Basil.")["too_short"] == -1.0
    # the request repeated back uses every content word of it, and answers nothing
    echo = gold_parts(BASIL, "How do I keep basil alive on a windowsill?")
    assert echo["relevance"] == 2.0 and echo["echo"] == -3.0 and gold_score(BASIL, BASIL) < gold_score(BASIL, on_topic)
    # an answer that repeats the question's words and adds its own is an answer, not an echo
    opposite = "What is the opposite of generous, in one word?"
    assert gold_parts(opposite, "The opposite of generous, in one word, is selfish.")["echo"] == 0.0
    assert gold_parts(opposite, "The opposite of generous, in one word?")["echo"] == -3.0
    # "short story" and "quick question" ask for no short answer
    story = " ".join(["word"] * 50) + "."
    assert gold_parts("Suggest a title for my short story about a lighthouse.", story)["length"] == 0.0
    assert gold_parts("Suggest a title, briefly.", story)["length"] < 0
    assert gold_score(BASIL, "") == gold_score(BASIL, "  ") == -3.0  # an empty answer is the worst
    # without a brevity request the target is 60 words
    assert gold_parts("Describe how a windowsill herb garden works.", " ".join(["word"] * 60) + ".")["length"] == 0.0
    assert gold_reward([BASIL, BASIL], [on_topic, ""]) == [gold_score(BASIL, on_topic), -3.0]


def test_the_prompts_are_the_320_written_requests():
    requests = read_requests()
    assert len(requests) == len(set(requests)) == 320 and TASK.prompts == tuple(requests)
