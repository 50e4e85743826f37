"""What every DataModule shares: reading sources, validating every row up front, the held-out split,
the length policy with its counts, the tokenizer, and resumable training loaders."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Sampler

from rlhf_lightning.data.chat import (
    CHAT_TEMPLATE_MODES,
    ChatTemplateMode,
    describe_text_rows,
    text_fields_spell_control_tokens,
    text_rows_as_chat,
)
from rlhf_lightning.data.errors import OptionError, RowLocation
from rlhf_lightning.data.loading import ListDataset, ResumableDataLoader, ResumableSampler
from rlhf_lightning.data.readers import describe, read_rows
from rlhf_lightning.data.split import prompt_group, split_groups
from rlhf_lightning.models import load_tokenizer

log = logging.getLogger(__name__)


def as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class Dropped(Exception):
    """Raised by ``tokenize_row`` for a valid row that is left out on purpose; the reason is counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RowsDataModule(L.LightningDataModule):
    """Base of the DataModules: where the rows come from and how they are split, cut and batched. Subclasses
    implement ``tokenize_row``, ``example_length``, ``truncate`` and ``collate_fn``, and declare the options whose
    meaning or default is their own; every bad row raises :class:`~rlhf_lightning.data.errors.DataFormatError`
    in ``setup``, before any model weight is loaded.

    Args:
        train_files: Training rows: local jsonl/json/parquet/csv paths, ``builtin:NAME``, or
            ``hf:OWNER/NAME[:SPLIT]``.
        val_files: Validation rows in the same forms. When empty, ``val_fraction`` of the training rows is held
            out.
        val_fraction: Fraction of the training rows' distinct prompts held out for validation when ``val_files``
            is empty (at least one prompt); every row of a held-out prompt is held out with it
            (:mod:`rlhf_lightning.data.split`). 0 disables validation.
        split_seed: Seed of the held-out split.
        max_length: Longest sequence in tokens.
        overlong: What happens to a longer row: ``truncate`` or ``drop``; either way the rows affected are
            counted and logged.
        batch_size: Rows per training batch (per device).
        val_batch_size: Rows per validation batch (defaults to ``batch_size``).
        shuffle: Shuffle the training rows every epoch (seeded); ``false`` keeps file order.
        shuffle_seed: Seed of the per-epoch shuffling of training rows.
        num_workers: Data loader worker processes.
        tokenizer: Tokenizer to use; by default the model's (``tokenizer`` of the LightningModule).
        exclude_prompts: Prompt files (any row format above, or a PPO run's ``heldout_prompts.jsonl``) whose
            prompts this DataModule leaves out: a row answering one of them is dropped and counted, in
            training and validation alike. The pipeline gives the SFT and reward stages the prompts the PPO
            stage holds out, so that its evaluation prompts are held out of every stage.
        chat_template: How text rows (a string ``prompt``, with a string response) are formatted: ``auto``
            (default) renders them through the tokenizer's chat template when it has one (prompt = user turn,
            response = assistant turn; a PPO prompt ends with the generation prompt), as the model was tuned;
            ``always`` requires a template; ``never`` joins them as raw text (TRL's behaviour). Message-list
            rows always use the template.
    """

    kind = "rows"

    def __init__(
        self,
        train_files: str | list[str],
        val_files: str | list[str] | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        max_length: int = 1024,
        overlong: Literal["truncate", "drop"] = "drop",
        batch_size: int = 8,
        val_batch_size: int | None = None,
        shuffle: bool = True,
        shuffle_seed: int = 0,
        num_workers: int = 0,
        tokenizer: str | None = None,
        chat_template: ChatTemplateMode = "auto",
        exclude_prompts: str | list[str] | None = None,
    ) -> None:
        super().__init__()
        if chat_template not in CHAT_TEMPLATE_MODES:
            raise OptionError(f"chat_template: expected one of {', '.join(CHAT_TEMPLATE_MODES)}, got {chat_template!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        if batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise ValueError(f"batch_size and val_batch_size must be >= 1, got {batch_size} and {val_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.train_files = as_list(train_files)
        if not self.train_files:
            raise ValueError("train_files is empty")
        self.val_files = as_list(val_files)
        self.exclude_prompts = as_list(exclude_prompts)
        self.excluded: set[str] = set()
        """The prompt groups of ``exclude_prompts`` (read in ``setup``)."""
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.max_length = max_length
        self.overlong = overlong
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.shuffle = shuffle
        self.shuffle_seed = shuffle_seed
        self.num_workers = num_workers
        self.tokenizer_name = tokenizer
        self.tokenizer = None
        self.chat_template = chat_template
        self.chat = False
        """Whether text rows go through the chat template (resolved from ``chat_template`` and the tokenizer)."""
        self.train_examples: list = []
        self.val_examples: list = []
        self.stats: Counter = Counter()
        self.longest: tuple[int, str] = (0, "")  # the longest overlong row read: (length, "file, row N")
        self.row_groups: list[str | None] = []
        """The prompt group (:func:`~rlhf_lightning.data.split.prompt_group`) of every row the last read went
        through, dropped ones included, by position (``None`` for a row whose prompt is in ``exclude_prompts``)."""

    # --- to implement ------------------------------------------------------------------------------------
    def tokenize_row(self, row: object, where: RowLocation) -> Any:
        raise NotImplementedError

    def example_length(self, example: Any) -> int:
        raise NotImplementedError

    def truncate(self, example: Any) -> Any:
        """The example cut to ``max_length``; raise :class:`Dropped` if nothing usable is left."""
        raise NotImplementedError

    def collate_fn(self) -> Callable:
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------------------------------
    def resolve_tokenizer(self):
        if self.tokenizer is not None:
            return self.tokenizer
        if self.tokenizer_name is not None:
            self.tokenizer = load_tokenizer(self.tokenizer_name)
        elif self.trainer is not None and getattr(self.trainer.lightning_module, "tokenizer", None) is not None:
            self.tokenizer = self.trainer.lightning_module.tokenizer
        else:
            raise ValueError(f"{type(self).__name__} needs a tokenizer: set data.tokenizer or attach a model")
        return self.tokenizer

    def read_source(self, source: str):
        """``(row number, row)`` of every row of ``source`` (:func:`~rlhf_lightning.data.readers.read_rows`)."""
        return read_rows(source)

    def load_examples(self, sources: list[str]) -> list:
        """Tokenize every row of ``sources`` and apply the length policy; raises on the first bad row."""
        return self._load_rows(sources)[0]

    def _load_rows(self, sources: list[str]) -> tuple[list, list[int]]:
        """The examples of ``sources`` and, for each, its row's position among all rows read (dropped included)."""
        self.resolve_tokenizer()
        self.chat = text_rows_as_chat(self.tokenizer, self.chat_template, "data.chat_template")
        examples, positions, position = [], [], -1
        self.row_groups = []
        for source in sources:
            name = describe(source)
            for row_number, row in self.read_source(source):
                self.stats["rows"] += 1
                position += 1
                group = prompt_group(row)
                if group in self.excluded:  # not this stage's prompt: it takes no part in the split either
                    self.row_groups.append(None)
                    self.stats["dropped (prompt in exclude_prompts)"] += 1
                    continue
                self.row_groups.append(group)
                if text_fields_spell_control_tokens(self.tokenizer, row):
                    self.stats["text rows spelling control tokens (trained as text)"] += 1
                try:
                    example = self.tokenize_row(row, RowLocation(name, row_number))
                    length = self.example_length(example)
                    if length > self.max_length:
                        self.longest = max(self.longest, (length, f"{name}, row {row_number}"))
                        if self.overlong == "drop":
                            raise Dropped("overlong")
                        example = self.truncate(example)
                        self.stats["truncated"] += 1
                except Dropped as dropped:
                    self.stats[f"dropped {dropped.reason}"] += 1
                    continue
                examples.append(example)
                positions.append(position)
        return examples, positions

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples:
            return
        self.stats, self.longest = Counter(), (0, "")
        self.excluded = {prompt_group(row) for source in self.exclude_prompts for _, row in read_rows(source)}
        examples, positions = self._load_rows(self.train_files)
        if not examples:
            raise self._no_usable_rows("train_files", self.train_files, "fix the files")
        train_groups = {self.row_groups[p] for p in positions}
        if self.val_files:
            before, self.longest = Counter(self.stats), (0, "")
            self.train_examples = examples
            self.val_examples, val_positions = self._load_rows(self.val_files)
            if not self.val_examples:
                self.stats.subtract(before)  # the validation files' own counts
                raise self._no_usable_rows("val_files", self.val_files, "fix the files, or leave val_files empty")
            val_groups = {self.row_groups[p] for p in val_positions}
            self._warn_shared_prompts(train_groups, val_groups)
            train_prompts, val_prompts = len(train_groups), len(val_groups)
        elif self.val_fraction > 0:
            self.train_examples, self.val_examples, train_prompts, val_prompts = self._split(examples, positions)
        else:
            self.train_examples, train_prompts, val_prompts = examples, len(train_groups), 0
        self._fit_validation_interval()
        self.stats["train examples"] = len(self.train_examples)
        self.stats["val examples"] = len(self.val_examples)
        self.stats["train prompts"], self.stats["val prompts"] = train_prompts, val_prompts
        counts = ", ".join(f"{k} {v}" for k, v in self.stats.items())
        rank_zero_info(
            f"{self.kind}: {counts} (max_length {self.max_length}, overlong: {self.overlong}; "
            f"chat_template: {self.chat_template}, {describe_text_rows(self.chat)})"
        )
        spelled = self.stats["text rows spelling control tokens (trained as text)"]
        if spelled:
            rank_zero_warn(
                f"{self.kind}: {spelled} text row(s) spell the tokenizer's control tokens (such as "
                f"{self.tokenizer.eos_token}); they are read as plain characters. If they are conversations "
                "rendered through a chat template by hand, give them as message lists instead "
                "(docs/data-formats.md#text-that-spells-a-control-token)"
            )

    def _fit_validation_interval(self) -> None:
        """A ``trainer.val_check_interval`` of N batches longer than an epoch validates once per epoch instead
        of stopping the run (Lightning refuses it), so a shipped config fits any dataset size."""
        trainer = self.trainer
        interval = getattr(trainer, "val_check_interval", None)
        if not isinstance(interval, int) or trainer.check_val_every_n_epoch is None:
            return  # (Lightning refuses a longer interval even with no validation data)
        batches = len(self.train_dataloader())
        limit = trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else max(1, int(batches * limit))
        if interval > batches:
            trainer.val_check_interval = batches
            rank_zero_info(
                f"{self.kind}: val_check_interval {interval} is longer than an epoch ({batches} batches): "
                "validating at the end of each epoch"
            )

    def _no_usable_rows(self, option: str, files: list[str], fix: str) -> OptionError:
        """One line for files none of whose rows can be used: the counts (``self.stats``, of these files) and,
        when rows were dropped as overlong, ``max_length``, the longest row and the fixes."""
        counts = ", ".join(f"{k} {v}" for k, v in self.stats.items() if v) or "no rows"
        message = f"{self.kind}: no usable rows in {option} {files} ({counts})"
        dropped = self.stats["dropped overlong"]
        if dropped:
            length, where = self.longest
            message += (
                f": {dropped} longer than max_length {self.max_length} (the longest, {where}, has {length} tokens)."
                f" To fix: raise max_length to {length}, or set overlong: truncate, or {fix}"
            )
            return OptionError(message)
        return OptionError(f"{message}. To fix: {fix}")

    def _warn_shared_prompts(self, train_groups: set[str], val_groups: set[str]) -> None:
        shared = len(train_groups & val_groups)
        if shared:
            rank_zero_warn(
                f"{self.kind}: {shared} of the {len(val_groups)} prompts in val_files {self.val_files} also appear "
                f"in train_files; validation on them measures what was seen in training. Leave val_files empty to "
                "hold out whole prompts (val_fraction), or remove them from one side"
            )

    def _split(self, examples: list, positions: list[int]) -> tuple[list, list, int, int]:
        """``(train, val, train prompts, val prompts)``: whole prompts are held out, drawn from the distinct
        prompts of all the rows read (with ``split_seed``, :func:`~rlhf_lightning.data.split.split_groups`),
        before any row is dropped or truncated, so a row lands on the same side whatever the length policy; a
        dropped row is simply missing from its side."""
        rows = self.stats["rows"]
        groups = [g for g in self.row_groups if g is not None]
        val_groups = split_groups(groups, self.val_fraction, self.split_seed)
        held_out = len(val_groups)
        side = [self.row_groups[p] in val_groups for p in positions]
        val = [e for e, held in zip(examples, side) if held]
        train = [e for e, held in zip(examples, side) if not held]
        prompts = [{self.row_groups[p] for p, held in zip(positions, side) if held == h} for h in (False, True)]
        if not train or not val:
            fixes = ["set val_fraction: 0 (no validation)", "give more rows", "put validation rows in val_files"]
            dropped = self.stats["dropped overlong"]
            if dropped:
                fixes.insert(0, f"raise max_length ({self.max_length}) or set overlong: truncate to keep the {dropped} "
                             "overlong rows")  # fmt: skip
            raise OptionError(
                f"{self.kind}: val_fraction {self.val_fraction} holds out {held_out} of the "
                f"{len(set(groups))} prompts of the {rows} rows in {self.train_files}, leaving {len(train)} "
                f"usable rows to train on and {len(val)} to validate on (counts: {dict(self.stats)}). To fix: "
                f"{'; or '.join(fixes)}"
            )
        return train, val, len(prompts[0]), len(prompts[1])

    def _batches_done(self) -> int:
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self.trainer else 0

    def _generator(self) -> torch.Generator:
        """The loaders' own generator: a loader draws a seed for its workers each time it starts an epoch, and
        from the global RNG that draw would come between a checkpoint and the next training step, so a run
        resumed at an epoch boundary (or one with validation in between) would not continue exactly."""
        return torch.Generator().manual_seed(self.shuffle_seed)

    def train_dataloader(self) -> DataLoader:
        dataset = ListDataset(self.train_examples)
        return ResumableDataLoader(
            dataset,
            sampler=ResumableSampler(dataset, shuffle=self.shuffle, seed=self.shuffle_seed, drop_last=False),
            batches_done=self._batches_done,
            batch_size=self.batch_size,
            collate_fn=self.collate_fn(),
            num_workers=self.num_workers,
            generator=self._generator(),
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_examples:
            return []
        dataset = ListDataset(self.val_examples)
        return DataLoader(
            dataset,
            batch_size=self.val_batch_size,
            sampler=self._unrepeated_val_sampler(dataset),
            shuffle=False,
            collate_fn=self.collate_fn(),
            num_workers=self.num_workers,
            generator=self._generator(),
        )

    def _unrepeated_val_sampler(self, dataset: Dataset) -> Sampler | None:
        """Under DDP, for a stage whose validation metrics are sums over rows synced across ranks (its module sets
        ``validation_without_repeats``), the validation rows split across the ranks without repeating any: rank
        ``k`` of ``n`` takes rows ``k, k + n, ...``, so the ranks' counts may differ by one. ``None`` otherwise:
        Lightning's ``DistributedSampler``, which repeats rows so that every rank has as many; also with fewer
        rows than ranks, where a rank without a batch would fall out of step with the others."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        if not getattr(module, "validation_without_repeats", False):
            return None
        if not (dist.is_available() and dist.is_initialized()) or not 1 < dist.get_world_size() <= len(dataset):
            return None
        return UnrepeatedDistributedSampler(dataset, num_replicas=dist.get_world_size(), rank=dist.get_rank(),
                                            shuffle=False)  # fmt: skip
