"""What judges read: the prompt as the model saw it, every turn of a conversation included."""

import pytest

from rlhf_lightning.evaluation.judges import ConstitutionJudge, RuleJudge, transcript

CONVERSATION = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    ]},
    {"role": "tool", "name": "weather", "content": "rain, 8 C"},
    {"role": "user", "content": "And a haiku\nabout it?"},
]  # fmt: skip


def test_transcript_writes_every_turn_under_its_role():
    assert transcript("Just text.") == "Just text."
    assert transcript(CONVERSATION, [{"name": "weather"}]) == (
        'Tools: [{"name": "weather"}]\n\n'
        "System: Be terse.\n\n"
        "User: Weather in Oslo?\n\n"
        'Assistant: [calls weather with {"city": "Oslo"}]\n\n'
        "Tool (weather): rain, 8 C\n\n"
        "User: And a haiku\nabout it?"
    )


def echo_length_of_prompt(prompts, responses):
    return [float(len(p)) for p in prompts]


def test_a_rule_judge_is_given_the_transcript():
    judge = RuleJudge("tests.evaluation.test_judges:echo_length_of_prompt")
    assert judge.scores(CONVERSATION, ["a", "b"]) == [float(len(transcript(CONVERSATION)))] * 2
    assert judge.scores("Hi.", ["a"]) == [3.0]


def test_the_constitution_judge_asks_about_every_turn(tiny_llama, tmp_path):
    principles = tmp_path / "principles.txt"
    principles.write_text("Be brief.\n")
    judge = ConstitutionJudge(str(principles), tiny_llama, max_length=4096)
    question = judge.tokenizer.decode(judge.question(CONVERSATION, "Grey rain on the fjord"))
    for part in ("Be brief.", "System: Be terse.", "User: Weather in Oslo?", "Tool (weather): rain, 8 C",
                 "User: And a haiku\nabout it?", "next reply:\nGrey rain on the fjord"):  # fmt: skip
        assert part in question, part
    text_question = judge.tokenizer.decode(judge.question("Say hi.", "hi"))
    assert "A user asked:\nSay hi." in text_question and "System:" not in text_question
    scores = judge.scores(CONVERSATION, ["hi", "hello there", "hi"])
    assert scores[0] == pytest.approx(scores[2], abs=1e-5)
