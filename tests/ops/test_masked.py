import pytest
import torch

from rlhf_lightning.ops import masked_mean, masked_sum, masked_var, standard_error, whiten
from rlhf_lightning.ops.masked import global_mean_weight, masked_count, world_size

VALUES = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, -7.0]])
MASK = torch.tensor([[True, True, True, False], [True, True, False, False]])
# valid entries: 1, 2, 3, 4, 5 -> sum 15, mean 3, squared deviations 4+1+0+1+4 = 10


def test_masked_sum_and_mean_ignore_invalid_entries():
    assert masked_sum(VALUES, MASK).item() == 15.0
    assert masked_mean(VALUES, MASK).item() == 3.0


def test_masked_var_unbiased_and_biased():
    assert masked_var(VALUES, MASK).item() == pytest.approx(10 / 4)
    assert masked_var(VALUES, MASK, unbiased=False).item() == pytest.approx(10 / 5)


def test_masked_var_is_exact_for_large_offsets():
    # E[x^2] - mean^2 would lose every digit here in float32.
    big = VALUES + 1e6
    assert masked_var(big, MASK).item() == pytest.approx(2.5, rel=1e-4)


def test_masked_var_needs_two_entries_for_bessel():
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(VALUES, torch.tensor([[True, False, False, False], [False, False, False, False]]))


def test_masked_mean_of_nothing_is_zero():
    assert masked_mean(VALUES, torch.zeros_like(MASK)).item() == 0.0


def test_whiten_matches_hand_computation():
    out = whiten(VALUES, MASK)
    std = (10 / 4) ** 0.5
    expected = torch.tensor([[-2 / std, -1 / std, 0.0, 0.0], [1 / std, 2 / std, 0.0, 0.0]])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_whiten_without_shift_keeps_the_mean():
    out = whiten(VALUES, MASK, shift_mean=False)
    assert masked_mean(out, MASK).item() == pytest.approx(3.0)
    assert masked_var(out, MASK).item() == pytest.approx(1.0, rel=1e-5)
    assert out[0, 3].item() == 0.0


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_of_a_single_valid_entry_returns_it_unchanged(shift_mean):
    # one prompt whose response is a lone EOS: one valid advantage, no spread to normalise by
    values = torch.tensor([[0.7, 5.0, 5.0]])
    mask = torch.tensor([[True, False, False]])
    assert whiten(values, mask, shift_mean=shift_mean).tolist() == [[pytest.approx(0.7), 0.0, 0.0]]
    assert whiten(values, torch.zeros_like(mask), shift_mean=shift_mean).tolist() == [[0.0, 0.0, 0.0]]


def test_standard_error_of_the_mean_by_hand():
    # valid 1, 2, 6: mean 3, squared deviations 4 + 1 + 9 = 14, Bessel variance 7, standard error sqrt(7 / 3)
    values = torch.tensor([1.0, 2.0, 6.0, 100.0])
    mask = torch.tensor([True, True, True, False])
    assert standard_error(values, mask).item() == pytest.approx((7 / 3) ** 0.5)
    assert standard_error(values, torch.tensor([True, False, False, False])).item() == float("inf")  # one value


def test_global_mean_weight_by_hand():
    # this rank holds the rows of VALUES (valid 1, 2, 3 and 4, 5: sum 15, mean 3), the other of two ranks 2 valid
    # entries summing to 14 (mean 7): the mean over the union is (15 + 14) / 7 = 29 / 7, not (3 + 7) / 2
    assert masked_count(MASK).item() == 5 and world_size() == 1
    first, second = MASK.clone(), MASK.clone()
    first[1], second[0] = False, False  # this rank's two micro-batches: 3 and 2 valid entries, means 2 and 4.5
    w1, w2 = global_mean_weight(first, 7, ranks=2), global_mean_weight(second, 7, ranks=2)
    assert (w1.item(), w2.item()) == (pytest.approx(6 / 7), pytest.approx(4 / 7))
    this_rank = w1 * masked_mean(VALUES, first) + w2 * masked_mean(VALUES, second)  # (6 * 2 + 4 * 4.5) / 7
    assert this_rank.item() == pytest.approx(30 / 7)
    other_rank = global_mean_weight(torch.tensor([True, True]), 7, ranks=2).item() * 7  # 4 / 7 times its mean
    assert (this_rank.item() + other_rank) / 2 == pytest.approx(29 / 7)  # DDP's average: the union's mean
    assert global_mean_weight(first, 5).item() == pytest.approx(3 / 5)  # one rank: the part's share of its batch
    assert global_mean_weight(torch.zeros_like(MASK), 0, ranks=2).item() == 0.0  # nothing valid: no weight
