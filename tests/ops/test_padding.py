import torch

from rlhf_lightning.ops import left_pad, right_pad


def test_each_side_pads_and_masks_from_the_lengths():
    rows = [[1, 2, 3], [4], []]
    ids, mask = left_pad(rows, pad_id=4)  # the pad id is also a real token here: masks must not compare ids
    assert ids.tolist() == [[1, 2, 3], [4, 4, 4], [4, 4, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    ids, mask = right_pad(rows, pad_id=4)
    assert ids.tolist() == [[1, 2, 3], [4, 4, 4], [4, 4, 4]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_no_rows_give_empty_batches():
    ids, mask = left_pad([], pad_id=0)
    assert ids.shape == mask.shape == (0, 0)
