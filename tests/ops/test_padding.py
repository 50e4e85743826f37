import torch

from rlhf_lightning.ops import left_pad, nonpad_columns, pack_shared_prefix, right_pad, shared_prefix_attention_mask


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


def test_nonpad_columns_drop_columns_that_are_padding_in_every_row():
    # two left-padded prompts of 2 and 3 tokens in 5 columns, then responses of 1 and 2 tokens in 4 columns
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1, 0, 0]])
    assert nonpad_columns(mask) == slice(2, 7)
    assert nonpad_columns(mask[:1]) == slice(3, 6)
    assert nonpad_columns(torch.ones(2, 3)) == slice(0, 3)
    assert nonpad_columns(torch.zeros(2, 3)) == slice(0, 0)


def test_shared_prefix_packing_hand_computed():
    batch = pack_shared_prefix([[[1, 2, 3, 4], [1, 2, 5], [1, 2, 5, 6]], [[7, 8]]], pad_id=0)
    # group 1 shares [1, 2]; each sequence keeps the rest; group 2 is one sequence, as it is
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 5, 6], [7, 8, 0, 0, 0, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2, 2, 3], [0, 1, 0, 0, 0, 0, 0]]
    assert batch.segments.tolist() == [[0, 0, 1, 1, 2, 3, 3], [0, 1, -1, -1, -1, -1, -1]]
    assert batch.last.tolist() == [[0, 3], [0, 4], [0, 6], [1, 1]]


def test_a_sequence_that_is_the_others_prefix_keeps_its_last_token():
    batch = pack_shared_prefix([[[1, 2], [1, 2, 3]]], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 2, 3]] and batch.last.tolist() == [[0, 1], [0, 3]]
    assert batch.position_ids.tolist() == [[0, 1, 1, 2]]


def test_shared_prefix_attention_mask_hand_computed():
    segments = torch.tensor([[0, 0, 1, 1, 2, -1]])
    allowed = shared_prefix_attention_mask(segments)[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # the second answer sees the prompt and itself, not the first answer
        [0, 0, 0, 0, 0, 1],  # padding sees itself only
    ]
