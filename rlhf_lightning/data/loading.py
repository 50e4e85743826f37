"""Batching: right-padded collation and a data loader that resumes mid-epoch at the exact next batch."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from rlhf_lightning.data.formats import TokenizedExample
from rlhf_lightning.ops.padding import right_pad


class ListDataset(Dataset):
    def __init__(self, items: Sequence) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def collate_right_padded(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack examples into ``input_ids``, ``attention_mask`` and ``loss_mask``, each ``(b, t)``.

    Masks come from each example's length, never from comparing ids with ``pad_id``.
    """
    ids, attention = right_pad([e.input_ids for e in examples], pad_id)
    loss, _ = right_pad([e.loss_mask for e in examples], 0)
    loss = loss.bool()
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss}


class ResumableSampler(DistributedSampler):
    """A seeded shuffling sampler (a ``DistributedSampler``, so Lightning neither replaces nor wraps it
    under DDP) that can start an epoch part-way through, to continue an interrupted run exactly."""

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0, **kwargs) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            kwargs.setdefault("num_replicas", 1)
            kwargs.setdefault("rank", 0)
        super().__init__(dataset, shuffle=shuffle, seed=seed, **kwargs)
        self._skip = 0

    def skip_next_epoch_start(self, num_samples: int) -> None:
        self._skip = num_samples

    def __iter__(self):
        skip, self._skip = self._skip, 0
        return itertools.islice(super().__iter__(), skip, None)


class ResumableDataLoader(DataLoader):
    """A data loader that Lightning saves in checkpoints and restores before iterating.

    The position saved is the number of batches the training loop has finished in this epoch, read from
    ``batches_done`` (the trainer's progress) rather than counted here: Lightning prefetches a batch,
    so the loader's own count runs ahead of training.
    """

    def __init__(self, dataset: Dataset, *, sampler: ResumableSampler, batches_done: Callable[[], int], **kwargs):
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.batches_done = batches_done

    def state_dict(self) -> dict:
        return {"batches_done": int(self.batches_done()), "epoch": int(self.sampler.epoch)}

    def load_state_dict(self, state: dict) -> None:
        done = state["batches_done"] % max(len(self), 1)  # a full epoch done means a fresh one starts
        self.sampler.skip_next_epoch_start(done * self.batch_size)
