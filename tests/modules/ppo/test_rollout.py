"""The rollout half of a PPO iteration, by hand: score shaping and what a reward function is given."""

import pytest
import torch

from rlhf_lightning.models.score_function import ScoreFunction
from rlhf_lightning.models.tiny import build_char_tokenizer
from rlhf_lightning.modules.ppo import RewardShaping
from rlhf_lightning.modules.ppo.rollout import RewardScorer, micro_slices, shape_scores


def test_score_shaping_penalises_unfinished_and_empty_responses():
    raw, ended = torch.tensor([2.0, 2.0, -5.0, 3.0]), torch.tensor([True, False, False, True])
    empty = torch.tensor([False, False, False, True])  # the last one is a stop token alone

    def shaped(**options) -> list[float]:
        return shape_scores(raw, ended, empty, RewardShaping(**options)).tolist()

    assert shaped(missing_eos_penalty=1.0, missing_eos_mode="subtract") == [2.0, 1.0, -6.0, 2.0]
    assert shaped(missing_eos_penalty=1.0, missing_eos_mode="replace") == [2.0, -1.0, -1.0, -1.0]
    assert shaped(missing_eos_penalty=1.0, penalize_empty=False) == [2.0, 1.0, -6.0, 3.0]
    assert shaped(missing_eos_penalty=None, score_clip=3.0) == [2.0, 2.0, -3.0, 3.0]


seen: list = []


def recording_reward(prompts: list[str], responses: list[str]) -> list[float]:
    seen.append((prompts, responses))
    return [float(len(r)) for r in responses]


def test_a_reward_function_gets_the_prompts_as_written_and_the_responses_without_padding():
    tokenizer = build_char_tokenizer()
    scorer = RewardScorer(None, ScoreFunction("tests.modules.ppo.test_rollout:recording_reward", "reward_function"),
                          tokenizer, "unused")  # fmt: skip
    pad = tokenizer.pad_token_id
    prompt = tokenizer("ab")["input_ids"]
    answers = [tokenizer("xyz")["input_ids"], tokenizer("q")["input_ids"]]
    sequences = torch.tensor([prompt + answers[0], prompt + answers[1] + [pad, pad]])
    attention = torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    seen.clear()
    scores = scorer(sequences, attention, prompt_length=2, prompt_texts=["the request"])
    assert seen == [(["the request"], ["xyz", "q"])] and scores.tolist() == [3.0, 1.0]
    scorer(sequences, attention, prompt_length=2)  # without the texts: the prompt tokens decoded
    assert seen[-1][0] == ["ab", "ab"]


def test_micro_slices_cover_every_row_once():
    assert micro_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert micro_slices(5, None) == [slice(0, 5)]


def test_the_logged_kl_and_its_standard_error_are_the_responses_summed_k1():
    from rlhf_lightning.modules.ppo import PPOConfig
    from rlhf_lightning.modules.ppo.rollout import FrozenPasses, Rollout, build_experience

    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    sequences = torch.tensor([[5, 6, 7, 8, 2], [5, 6, 7, 2, 0], [5, 6, 2, 0, 0]])
    rollout = Rollout(sequences, torch.cat([torch.ones(3, 2, dtype=torch.long), mask.long()], 1), mask,
                      torch.ones(3, dtype=torch.bool), 2)  # fmt: skip
    logprobs = torch.tensor([[-1.0, -0.5, -0.2], [-0.3, -0.1, 0.0], [-2.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -0.5, -0.2], [-0.3, -0.6, 0.0], [-0.5, 0.0, 0.0]])
    frozen = FrozenPasses(ref * mask, torch.zeros(3, 3), torch.zeros(3))
    shaping = RewardShaping(kl_coef=0.1, kl_estimator="k3")  # the logged KL is k1 whatever the estimator
    _, stats = build_experience(rollout, frozen, logprobs * mask, torch.zeros(3, 3), 0.1, PPOConfig(), shaping)
    # per response: 0.5, 0.5, -1.5; mean -1/6; deviations 2/3, 2/3, -4/3: Bessel variance 4/3, error sqrt(4/9)
    assert stats.kl.item() == pytest.approx(-1 / 6)
    assert stats.kl_stderr.item() == pytest.approx(2 / 3)
    assert stats.tags()["objective/kl_stderr"] is stats.kl_stderr
