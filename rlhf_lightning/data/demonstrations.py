"""Demonstrations (prompt -> good response) for supervised fine-tuning."""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Sequence
from typing import Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from rlhf_lightning.data.formats import RowLocation, TokenizedExample, tokenize_demonstration, truncate
from rlhf_lightning.data.loading import ListDataset, ResumableDataLoader, ResumableSampler, collate_right_padded
from rlhf_lightning.data.readers import describe, read_rows

log = logging.getLogger(__name__)


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class DemonstrationsDataModule(L.LightningDataModule):
    """Reads, validates and tokenizes demonstrations, then serves right-padded batches.

    Every row is checked before training starts; the first bad row stops the run with an error naming
    its file, row and field.

    Args:
        train_files: Training data: local jsonl/json/parquet/csv paths, ``builtin:NAME``, or ``hf:OWNER/NAME[:SPLIT]``.
        val_files: Validation data in the same forms. When empty, ``val_fraction`` of the training rows
            is held out.
        val_fraction: Fraction of training rows held out for validation when ``val_files`` is empty (at
            least one row); 0 disables validation.
        split_seed: Seed of the held-out split.
        max_length: Longest sequence in tokens (prompt + completion).
        overlong: ``truncate`` keeps the first ``max_length`` tokens; ``drop`` removes the row. Either way
            the rows affected are counted and logged. A row left with no trained token is dropped.
        completion_only_loss: Train on completion (assistant) tokens only; ``false`` trains on every token.
        batch_size: Sequences per training batch (per device).
        val_batch_size: Sequences per validation batch (defaults to ``batch_size``).
        shuffle: Shuffle the training rows every epoch (seeded); ``false`` keeps file order.
        shuffle_seed: Seed of the per-epoch shuffling of training rows.
        num_workers: Data loader worker processes.
        tokenizer: Tokenizer to use; by default the model's (``model.tokenizer`` of the LightningModule).
    """

    def __init__(
        self,
        train_files: str | list[str] = "builtin:demonstrations.jsonl",
        val_files: str | list[str] | None = None,
        val_fraction: float = 0.05,
        split_seed: int = 0,
        max_length: int = 1024,
        overlong: Literal["truncate", "drop"] = "truncate",
        completion_only_loss: bool = True,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        shuffle: bool = True,
        shuffle_seed: int = 0,
        num_workers: int = 0,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.train_files = _as_list(train_files)
        if not self.train_files:
            raise ValueError("train_files is empty")
        self.val_files = _as_list(val_files)
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.max_length = max_length
        self.overlong = overlong
        self.completion_only_loss = completion_only_loss
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.shuffle = shuffle
        self.shuffle_seed = shuffle_seed
        self.num_workers = num_workers
        self.tokenizer_name = tokenizer
        self.tokenizer = None
        self.train_examples: list[TokenizedExample] = []
        self.val_examples: list[TokenizedExample] = []
        self.stats: dict[str, int] = {}

    def _resolve_tokenizer(self):
        if self.tokenizer is not None:
            return self.tokenizer
        if self.tokenizer_name is not None:
            from rlhf_lightning.models import load_tokenizer

            self.tokenizer = load_tokenizer(self.tokenizer_name)
        elif self.trainer is not None and getattr(self.trainer.lightning_module, "tokenizer", None) is not None:
            self.tokenizer = self.trainer.lightning_module.tokenizer
        else:
            raise ValueError("DemonstrationsDataModule needs a tokenizer: set data.tokenizer or attach a model")
        return self.tokenizer

    def load_examples(self, sources: list[str]) -> list[TokenizedExample]:
        """Tokenize every row of ``sources``, applying the length policy; raises on the first bad row."""
        tokenizer = self._resolve_tokenizer()
        examples = []
        for source in sources:
            name = describe(source)
            for row_number, row in read_rows(source):
                example = tokenize_demonstration(
                    row, tokenizer, RowLocation(name, row_number), self.completion_only_loss
                )
                self.stats["rows"] = self.stats.get("rows", 0) + 1
                if len(example.input_ids) > self.max_length:
                    if self.overlong == "drop":
                        self.stats["dropped_overlong"] = self.stats.get("dropped_overlong", 0) + 1
                        continue
                    truncated = truncate(example, self.max_length)
                    if truncated is None:
                        self.stats["dropped_no_target_after_truncation"] = (
                            self.stats.get("dropped_no_target_after_truncation", 0) + 1
                        )
                        continue
                    self.stats["truncated"] = self.stats.get("truncated", 0) + 1
                    example = truncated
                examples.append(example)
        return examples

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples:
            return
        self.stats = {}
        examples = self.load_examples(self.train_files)
        if self.val_files:
            self.train_examples, self.val_examples = examples, self.load_examples(self.val_files)
        elif self.val_fraction > 0:
            order = list(range(len(examples)))
            random.Random(self.split_seed).shuffle(order)
            n_val = max(1, round(self.val_fraction * len(examples)))
            val_index = set(order[:n_val])
            self.val_examples = [e for i, e in enumerate(examples) if i in val_index]
            self.train_examples = [e for i, e in enumerate(examples) if i not in val_index]
        else:
            self.train_examples = examples
        if not self.train_examples:
            raise ValueError(f"no training examples left in {self.train_files} (stats: {self.stats})")
        self.stats.update(train_examples=len(self.train_examples), val_examples=len(self.val_examples))
        rank_zero_info(
            "Demonstrations: "
            + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.stats.items())
            + f" (max_length {self.max_length}, overlong: {self.overlong})"
        )

    def _collate(self):
        return functools.partial(collate_right_padded, pad_id=self.tokenizer.pad_token_id)

    def _batches_done(self) -> int:
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self.trainer else 0

    def train_dataloader(self) -> DataLoader:
        dataset = ListDataset(self.train_examples)
        return ResumableDataLoader(
            dataset,
            sampler=ResumableSampler(dataset, shuffle=self.shuffle, seed=self.shuffle_seed, drop_last=False),
            batches_done=self._batches_done,
            batch_size=self.batch_size,
            collate_fn=self._collate(),
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_examples:
            return []
        return DataLoader(
            ListDataset(self.val_examples),
            batch_size=self.val_batch_size,
            shuffle=False,
            collate_fn=self._collate(),
            num_workers=self.num_workers,
        )

    def sample_prompts(self, n: int) -> list[list[int]]:
        """Token ids of the prompts of the first ``n`` validation examples (training ones if none)."""
        pool = self.val_examples or self.train_examples
        return [list(e.input_ids[: e.prompt_length]) for e in pool[:n]]
