"""Demonstrations (prompt -> good response) for supervised fine-tuning."""

from __future__ import annotations

import functools
from typing import Literal

from rlhf_lightning.data.base import Dropped, RowsDataModule
from rlhf_lightning.data.errors import RowLocation
from rlhf_lightning.data.formats import TokenizedExample, tokenize_demonstration, truncate
from rlhf_lightning.data.loading import collate_right_padded


class DemonstrationsDataModule(RowsDataModule):
    """Reads, validates and tokenizes demonstrations, then serves right-padded batches.

    Every row is checked before training starts; the first bad row stops the run with an error naming
    its file, row and field.

    Args:
        train_files: Training demonstrations: local jsonl/json/parquet/csv paths, ``builtin:NAME``, or
            ``hf:OWNER/NAME[:SPLIT]``.
        val_fraction: Fraction of the training prompts held out (with all their rows) when ``val_files`` is
            empty (at least one prompt); 0 disables validation.
        max_length: Longest sequence in tokens (prompt + completion).
        overlong: ``truncate`` keeps the first ``max_length`` tokens; ``drop`` removes the row. Either way
            the rows affected are counted and logged. A row left with no trained token is dropped.
        batch_size: Sequences per training batch (per device).
        completion_only_loss: Train on completion (assistant) tokens only; ``false`` trains on every token.
        **kwargs: The options every DataModule shares (:class:`~rlhf_lightning.data.base.RowsDataModule`).
    """

    kind = "demonstrations"

    def __init__(
        self,
        train_files: str | list[str] = "builtin:demonstrations.jsonl",
        *,
        val_fraction: float = 0.05,
        max_length: int = 1024,
        overlong: Literal["truncate", "drop"] = "truncate",
        batch_size: int = 8,
        completion_only_loss: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(train_files, val_fraction=val_fraction, max_length=max_length, overlong=overlong,
                         batch_size=batch_size, **kwargs)  # fmt: skip
        self.completion_only_loss = completion_only_loss

    def tokenize_row(self, row: object, where: RowLocation) -> TokenizedExample:
        return tokenize_demonstration(row, self.tokenizer, where, self.completion_only_loss, self.chat)

    def example_length(self, example: TokenizedExample) -> int:
        return len(example.input_ids)

    def truncate(self, example: TokenizedExample) -> TokenizedExample:
        cut = truncate(example, self.max_length)
        if cut is None:
            raise Dropped("no target after truncation")
        return cut

    def collate_fn(self):
        return functools.partial(collate_right_padded, pad_id=self.tokenizer.pad_token_id)

    def sample_prompts(self, n: int) -> list[list[int]]:
        """Token ids of the prompts of the first ``n`` validation examples (training ones if none) that have a
        prompt (``text`` rows have none: there is nothing to answer)."""
        pool = self.val_examples or self.train_examples
        return [list(e.input_ids[: e.prompt_length]) for e in pool if e.prompt_length > 0][:n]
