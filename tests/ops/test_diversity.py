import pytest
import torch

from rlhf_lightning.ops.diversity import content_mask, distinct_n, empty_fraction, empty_responses, pearson

EOS = 2
# three responses: "5 6 5 6 EOS", "EOS" (empty), "7 7 7" (ran out of room), right-padded with 0
RESPONSES = torch.tensor([[5, 6, 5, 6, EOS], [EOS, 0, 0, 0, 0], [7, 7, 7, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
ENDED = torch.tensor([True, True, False])


def test_content_mask_drops_only_the_closing_stop_token():
    assert content_mask(MASK, ENDED).long().tolist() == [[1, 1, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0]]


def test_distinct_n_by_hand():
    content = content_mask(MASK, ENDED)
    # unigrams: 5 6 5 6 | 7 7 7 -> 3 distinct of 7
    assert distinct_n(RESPONSES, content, 1).item() == pytest.approx(3 / 7)
    # bigrams: (5,6) (6,5) (5,6) | (7,7) (7,7) -> 3 distinct of 5; none spans two responses
    assert distinct_n(RESPONSES, content, 2).item() == pytest.approx(3 / 5)
    assert distinct_n(RESPONSES, content, 5).item() == 0.0  # no response has 5 tokens
    with pytest.raises(ValueError, match="n must be >= 1"):
        distinct_n(RESPONSES, content, 0)


def test_empty_fraction_counts_answers_that_are_only_a_stop_token():
    assert empty_responses(MASK, ENDED).tolist() == [False, True, False]
    assert empty_fraction(MASK, ENDED).item() == pytest.approx(1 / 3)
    # a response cut at its first token without a stop token is not empty: it has one token of content
    assert empty_responses(MASK[:, :1], torch.tensor([False, True, False])).tolist() == [False, True, False]


def test_pearson_by_hand_and_for_constant_inputs():
    x, y = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0])
    # deviations (-1, 0, 1) and (-7/3, -1/3, 8/3): sum of products 5, squares 2 and 114/9
    assert pearson(x, y).item() == pytest.approx(5 / (2 * 114 / 9) ** 0.5)
    assert pearson(x, -x).item() == pytest.approx(-1.0)
    assert pearson(x, torch.ones(3)).item() == 0.0 and pearson(x[:1], y[:1]).item() == 0.0
