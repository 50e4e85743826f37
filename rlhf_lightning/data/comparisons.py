"""Human comparisons and rankings for reward-model training.

Accepted rows (TRL's preference formats, plus rankings):

- explicit prompt: ``{"prompt": str, "chosen": str, "rejected": str}``, or the same with message lists
  (``prompt`` a list of messages, ``chosen``/``rejected`` lists of assistant messages);
- implicit prompt: ``{"chosen": ..., "rejected": ...}`` where each holds the whole text or conversation;
- optional ``"margin": number`` on a pair: how much better the chosen response must score;
- rankings: ``{"prompt": ..., "responses": [r1, r2, ...], "ranking": [2, 1, ...]}`` where ``ranking``
  gives each response's rank (1 = best; equal ranks are ties), or without ``ranking`` when the responses
  are already ordered best to worst. A ranking of K responses yields up to K(K-1)/2 pairs, kept together
  in one batch element and averaged within it;
- optional ``"ended": [true, false, null, ...]`` on a ranking: whether each response ended with a stop token
  (``false``: cut off at the length limit; ``null``: not known). ``label export`` and a labelling database
  in ``train_files`` give it. A cut-off response is left out by default (``cut_off``).

Each response is tokenized as a full sequence (prompt + response) that ends with EOS, the token at which
the reward model reads its score. Identical chosen/rejected pairs and tied or identical pairs within
rankings are left out and counted.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from lightning.pytorch.utilities import rank_zero_info

from rlhf_lightning.data.base import Dropped, RowsDataModule
from rlhf_lightning.data.chat import (
    Conversation,
    encode_conversation,
    encode_text,
    end_of_turn_token_id,
    text_turns,
    validate_messages,
    validate_tools,
)
from rlhf_lightning.data.degenerate import (
    DEGENERATE_KINDS,
    DegenerateKind,
    as_response,
    best_response,
    degenerate_answers,
    has_prompt,
)
from rlhf_lightning.data.errors import RowLocation, type_name
from rlhf_lightning.data.formats import require_text, tokenize_conversation
from rlhf_lightning.data.labels import LABEL_SOURCES_AUTO, chosen_sources
from rlhf_lightning.data.labels import SUFFIXES as LABEL_SUFFIXES
from rlhf_lightning.data.readers import read_rows
from rlhf_lightning.ops.padding import pack_shared_prefix, right_pad


class ComparisonExample(NamedTuple):
    """The sequences of one prompt and the preferences among them."""

    sequences: list[list[int]]
    pairs: list[tuple[int, int]]
    """``(better, worse)`` indices into ``sequences``."""
    margin: float = 0.0
    prompt: str | list | None = None
    """The row's prompt (text or messages; ``None`` for implicit-prompt rows) and ``responses`` as given, and
    its ``tools``: what a check needs to tokenize other answers to the same prompt the same way."""
    responses: list | None = None
    tools: list[dict] | None = None


def tokenize_response(
    tokenizer,
    prompt: str | list | None,
    response: str | list,
    where: RowLocation,
    field: str,
    tools: list[dict] | None = None,
    chat: bool = False,
) -> list[int]:
    """Token ids of prompt + response, ending with the response's end-of-turn token or EOS (the scoring
    position). With ``chat``, a text prompt and response are a user and an assistant turn of the chat template
    (a response without a prompt stays raw text). Control-token spellings in the text are ordinary characters."""
    eos = tokenizer.eos_token_id
    if isinstance(response, str) and chat and prompt is not None:
        conversation = text_turns(prompt, response, field)
        return _through_last_target(
            tokenize_conversation(tokenizer, conversation, len(conversation.messages) - 1, where, field)
        )
    if isinstance(response, str):
        if prompt is None:
            return encode_text(tokenizer, response, add_special_tokens=True) + [eos]
        prompt_ids = encode_text(tokenizer, prompt, add_special_tokens=True)
        return prompt_ids + encode_text(tokenizer, response, add_special_tokens=False) + [eos]
    parts = ([("prompt", prompt)] if prompt else []) + [(field, response)]
    conversation = Conversation.of(parts, tools)
    return _through_last_target(tokenize_conversation(tokenizer, conversation, len(prompt or []), where, field))


def _through_last_target(example) -> list[int]:
    """The ids through the response's last token (the template's text after the final end of turn dropped)."""
    last_target = max(i for i, m in enumerate(example.loss_mask) if m)
    return example.input_ids[: last_target + 1]


def _response(row: dict, key: str, conversational: bool, where: RowLocation):
    if conversational:
        messages = validate_messages(row[key], key, where)
        if not any(m["role"] == "assistant" for m in messages):
            raise where.error(key, "has no assistant message")
        return messages
    return require_text(row, key, where)


def _margin(value: object, where: RowLocation) -> float:
    """A pair's margin: a finite number (0 when absent). CSV cells hold numbers as text, which is accepted."""
    if value is None or value == "":  # absent, or an empty csv cell
        return 0.0
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise where.error("margin", f"expected a number, got the text {value!r}") from None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise where.error("margin", f"expected a number, got {type_name(value)}")
    try:
        number = float(number)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):
        shown = str(value) if len(str(value)) <= 20 else f"{str(value)[:20]}... ({len(str(value))} digits)"
        raise where.error("margin", f"expected a finite number, got {shown}")
    return number


class ComparisonsDataModule(RowsDataModule):
    """Reads, validates and tokenizes comparisons and rankings; serves batches of prompts, each with its
    sequences and pairs (``input_ids``, ``attention_mask`` over all sequences, and ``better``, ``worse``,
    ``group``, ``margin`` over all pairs).

    ``batch_size`` counts prompts (a ranking of K responses puts K sequences in the batch) and ``max_length``
    bounds each sequence (prompt + response); ``overlong: drop`` (the default) leaves out a row with any longer
    sequence, because a truncated response no longer ends where it is scored.

    Args:
        train_files: Training comparisons: local jsonl/json/parquet/csv paths, ``builtin:NAME``, or
            ``hf:OWNER/NAME[:SPLIT]``.
        rejected_variants: Degenerate answers added to every training prompt as worse than its best response:
            ``empty``, ``cut_mid_sentence``, ``prompt_repeated`` (the request itself as the answer),
            ``phrase_repeated`` (:func:`rlhf_lightning.data.degenerate.degenerate_answers`). People rarely
            compare such answers, so the Bradley-Terry loss never says how they score, and a policy finds
            the ones that score well; the reward stage's degenerate-answer check reports which. Each variant
            adds one sequence and one pair per prompt (the cost of a batch grows about in proportion); a
            variant identical to a real response or longer than ``max_length`` is left out. Validation rows
            are left as given, so ``val/accuracy`` stays on the real comparisons. Default: none.
        share_prompts: Also pack each prompt's sequences into one row, the prompt once and then each
            response (``packed_*`` keys, :func:`~rlhf_lightning.ops.pack_shared_prefix`): the reward model
            then computes a prompt once per comparison instead of once per response, with the same scores
            (docs/reward.md#one-prompt-one-pass). ``false``: every sequence separately, as before.
        cut_off: What becomes of a ranking's response marked ``ended: false`` (cut off at the length limit
            when it was generated): ``drop`` (default) leaves it and its pairs out, counted; ``keep`` trains it
            without the end token every finished response is scored at, so the reward model never sees a
            cut answer as one that stopped there (docs/human-feedback.md, "Cut-off answers").
        label_sources: Whose rankings a labelling database in ``train_files`` or ``val_files`` gives: ``auto``
            (default) the people's when it has any, else the judges'; or a list of ``human`` and ``judge``
            (``[human, judge]`` mixes them). The setup logs the rankings read per source and per annotator
            and those left out, and warns when a judge and the people disagree often
            (:func:`rlhf_lightning.data.labels.read_label_rows`).
        **kwargs: The options every DataModule shares (:class:`~rlhf_lightning.data.base.RowsDataModule`).
    """

    kind = "comparisons"

    def __init__(
        self,
        train_files: str | list[str] = "builtin:comparisons.jsonl",
        *,
        rejected_variants: list[DegenerateKind] | None = None,
        share_prompts: bool = True,
        cut_off: Literal["drop", "keep"] = "drop",
        label_sources: str | list[str] = "auto",
        **kwargs,
    ) -> None:
        super().__init__(train_files, **kwargs)
        if cut_off not in ("drop", "keep"):
            raise ValueError(f"data.cut_off: expected drop or keep, got {cut_off!r}")
        if label_sources != LABEL_SOURCES_AUTO:
            chosen_sources(label_sources, Counter())  # a bad list is refused before anything is read
        self.label_sources = label_sources
        self.share_prompts = share_prompts
        self.cut_off = cut_off
        self.rejected_variants = list(dict.fromkeys(rejected_variants or []))
        unknown = [k for k in self.rejected_variants if k not in DEGENERATE_KINDS]
        if unknown:
            raise ValueError(f"data.rejected_variants: unknown {unknown}; choose from {list(DEGENERATE_KINDS)}")

    def setup(self, stage: str | None = None) -> None:
        fresh = not self.train_examples
        super().setup(stage)
        if fresh and self.rejected_variants:
            before = self.stats.copy()
            self.train_examples = [self.with_rejected_variants(e) for e in self.train_examples]
            added = {k: v - before[k] for k, v in self.stats.items() if k.startswith("rejected variant")}
            counts = ", ".join(f"{k} {v}" for k, v in added.items())
            rank_zero_info(f"{self.kind}: rejected variants {', '.join(self.rejected_variants)}: {counts}")

    def with_rejected_variants(self, example: ComparisonExample) -> ComparisonExample:
        """``example`` with each of ``rejected_variants`` of its best response appended as a worse sequence,
        paired with that best response (``responses`` keeps the real answers only)."""
        if not has_prompt(example.prompt):
            self.stats["rejected variants skipped (row without a prompt)"] += 1
            return example
        best = best_response(example.pairs)
        answers = degenerate_answers(example.prompt, example.responses[best])
        sequences, pairs = list(example.sequences), list(example.pairs)
        for kind in self.rejected_variants:
            sequence = self.answer_sequence(example, answers[kind])
            if len(sequence) > self.max_length:
                self.stats[f"rejected variant {kind} skipped (longer than max_length)"] += 1
            elif sequence in sequences:
                self.stats[f"rejected variant {kind} skipped (identical to a response)"] += 1
            else:
                pairs.append((best, len(sequences)))
                sequences.append(sequence)
                self.stats[f"rejected variant {kind} added"] += 1
        return example._replace(sequences=sequences, pairs=pairs)

    def _no_usable_rows(self, option: str, files: list[str], fix: str):
        cut = self.stats["cut-off responses left out"]
        if any(Path(f).suffix in LABEL_SUFFIXES for f in files):
            fix = (f"change data.label_sources (now {self.label_sources}; the log above says what each database "
                   f"holds); or {fix}")  # fmt: skip
        if cut:
            fix = (f"sample longer answers (max_new_tokens) or set data.cut_off: keep to train the {cut} cut-off "
                   f"answers without their end token; or {fix}")  # fmt: skip
        return super()._no_usable_rows(option, files, fix)

    # --- rows ----------------------------------------------------------------------------------------------
    def read_source(self, source: str):
        return read_rows(source, self.label_sources)

    def tokenize_row(self, row: object, where: RowLocation) -> ComparisonExample:
        if not isinstance(row, dict):
            raise where.error(None, f"expected an object with named fields, got {type_name(row)}")
        if "responses" in row:
            return self._ranking(row, where)
        if "chosen" in row or "rejected" in row:
            return self._pair(row, where)
        raise where.error(
            None,
            f"no recognised fields (found {sorted(row)}); expected 'chosen' + 'rejected' (with or without "
            "'prompt'), or 'prompt' + 'responses' (+ 'ranking')",
        )

    def _prompt(self, row: dict, where: RowLocation, required: bool) -> str | list | None:
        if "prompt" not in row:
            if required:
                raise where.error("prompt", "missing: a ranking needs the prompt its responses answer")
            return None
        prompt = row["prompt"]
        if isinstance(prompt, list):
            return validate_messages(prompt, "prompt", where)
        return require_text(row, "prompt", where, allow_empty=True)

    def _pair(self, row: dict, where: RowLocation) -> ComparisonExample:
        for key in ("chosen", "rejected"):
            if key not in row:
                raise where.error(key, f"missing (the row has fields {sorted(row)})")
        prompt = self._prompt(row, where, required=False)
        conversational = isinstance(prompt, list) or (prompt is None and isinstance(row["chosen"], list))
        if isinstance(prompt, str) and isinstance(row["chosen"], list):
            raise where.error(
                "prompt",
                "is text while chosen is a message list: give the prompt as messages too, or leave it out when "
                "chosen and rejected hold whole conversations (UltraFeedback-style rows)",
            )
        chosen = _response(row, "chosen", conversational, where)
        rejected = _response(row, "rejected", conversational, where)
        margin = _margin(row.get("margin"), where)
        tools = validate_tools(row, where, conversational)
        if chosen == rejected:
            raise Dropped("identical chosen and rejected")
        sequences = [
            tokenize_response(self.tokenizer, prompt, chosen, where, "chosen", tools, self.chat),
            tokenize_response(self.tokenizer, prompt, rejected, where, "rejected", tools, self.chat),
        ]
        if sequences[0] == sequences[1]:
            raise Dropped("chosen and rejected identical once tokenized")
        return ComparisonExample(sequences, [(0, 1)], margin, prompt, [chosen, rejected], tools)

    def _ranking(self, row: dict, where: RowLocation) -> ComparisonExample:
        prompt = self._prompt(row, where, required=True)
        responses = row["responses"]
        if not isinstance(responses, list) or len(responses) < 2:
            raise where.error("responses", "expected a list of at least 2 responses")
        if "margin" in row:
            raise where.error("margin", "margins apply to chosen/rejected pairs, not to rankings")
        ranks = row.get("ranking")
        if ranks is None:
            ranks = list(range(1, len(responses) + 1))  # already ordered best to worst
        elif not isinstance(ranks, list) or len(ranks) != len(responses):
            raise where.error("ranking", f"expected a list of {len(responses)} ranks, one per response")
        for i, rank in enumerate(ranks):
            if isinstance(rank, bool) or not isinstance(rank, int):
                raise where.error(f"ranking[{i}]", f"expected an integer rank (1 = best), got {type_name(rank)}")
            if not 1 <= rank <= len(responses):
                raise where.error(
                    f"ranking[{i}]",
                    f"rank {rank} is outside 1..{len(responses)} (1 = best, one rank per response, ties allowed)",
                )
        tools = validate_tools(row, where, conversational=isinstance(prompt, list))
        conversational = isinstance(prompt, list)
        cut = self._cut_off(row, len(responses), where)
        if cut and self.cut_off == "drop":
            self.stats["cut-off responses left out"] += len(cut)
            keep = [i for i in range(len(responses)) if i not in cut]
            responses, ranks = [responses[i] for i in keep], [ranks[i] for i in keep]
            cut = set()
        items = []
        for i, response in enumerate(responses):
            field = f"responses[{i}]"
            if conversational:
                items.append(_response({field: response}, field, True, where))
            elif not isinstance(response, str):
                raise where.error(field, f"expected a string, got {type_name(response)}")
            elif not response.strip():
                raise where.error(field, "is empty")
            else:
                items.append(response)
        pairs = []
        for i in range(len(items)):
            for j in range(len(items)):
                if ranks[i] < ranks[j]:
                    if items[i] == items[j]:
                        self.stats["ranking pairs skipped (identical responses)"] += 1
                    else:
                        pairs.append((i, j))
                elif i < j and ranks[i] == ranks[j]:
                    self.stats["ranking pairs skipped (tied ranks)"] += 1
        if not pairs:
            raise Dropped("ranking without a strict preference" + (" among finished answers" if len(items) <
                                                                    len(row["responses"]) else ""))  # fmt: skip
        sequences = [
            tokenize_response(self.tokenizer, prompt, r, where, f"responses[{i}]", tools, self.chat)
            for i, r in enumerate(items)
        ]
        if cut:  # kept without the end token: scored where the answer was cut, not as if it stopped there
            self.stats["cut-off responses kept without their end token"] += len(cut)
            sequences = [s[:-1] if i in cut else s for i, s in enumerate(sequences)]
        return ComparisonExample(sequences, pairs, 0.0, prompt, items, tools)

    @staticmethod
    def _cut_off(row: dict, count: int, where: RowLocation) -> set[int]:
        """Indices of the responses a ranking row marks ``ended: false``; the field is checked."""
        ended = row.get("ended")
        if ended is None:
            return set()
        if not isinstance(ended, list) or len(ended) != count:
            raise where.error("ended", f"expected a list of {count} values (true, false or null), one per response")
        for i, value in enumerate(ended):
            if value is not None and not isinstance(value, bool):
                raise where.error(f"ended[{i}]", f"expected true, false or null, got {type_name(value)}")
        return {i for i, value in enumerate(ended) if value is False}

    # --- lengths and batches ---------------------------------------------------------------------------------
    def example_length(self, example: ComparisonExample) -> int:
        return max(len(s) for s in example.sequences)

    def truncate(self, example: ComparisonExample) -> ComparisonExample:
        sequences = [s[: self.max_length] for s in example.sequences]
        pairs = [(b, w) for b, w in example.pairs if sequences[b] != sequences[w]]
        if not pairs:
            raise Dropped("identical after truncation")
        return example._replace(sequences=sequences, pairs=pairs)

    def collate_fn(self):
        return functools.partial(collate_comparisons, pad_id=self.tokenizer.pad_token_id, pack=self.share_prompts)

    def answer_sequence(self, example: ComparisonExample, text: str) -> list[int]:
        """Token ids of ``example``'s prompt with another answer ``text``, formatted as its rows are (chat
        template or raw text, as the row's own responses). An empty ``text`` gives the prompt as a policy sees
        it (with the generation prompt) followed by the stop token: exactly what an empty answer is scored on.
        """
        if example.prompt is None:
            raise ValueError("an implicit-prompt row has no prompt to answer")
        where = RowLocation("another answer to a row's prompt (degenerate check, rejected variants)", 1)
        like = example.responses[0]
        chat = isinstance(like, list) or self.chat
        if text:
            return tokenize_response(self.tokenizer, example.prompt, as_response(text, like), where, "response",
                                     example.tools, self.chat)  # fmt: skip
        if not chat:
            return encode_text(self.tokenizer, example.prompt, add_special_tokens=True) + [self.tokenizer.eos_token_id]
        prompt = example.prompt
        conversation = (
            text_turns(prompt) if isinstance(prompt, str) else Conversation.of([("prompt", prompt)], example.tools)
        )
        encoding, _ = encode_conversation(self.tokenizer, conversation, where, "prompt", add_generation_prompt=True)
        stop = end_of_turn_token_id(self.tokenizer)
        return encoding.input_ids + [self.tokenizer.eos_token_id if stop is None else stop]


def collate_comparisons(
    examples: Sequence[ComparisonExample], pad_id: int, pack: bool = False
) -> dict[str, torch.Tensor]:
    """All sequences of the batch right-padded in one ``(n, t)`` tensor, with the pairs as index tensors;
    with ``pack``, also each prompt's sequences packed into one row behind their shared prefix
    (``packed_ids``, ``packed_positions``, ``packed_segments`` ``(g, t')`` and ``packed_last (n, 2)``, the
    sequences in the same order)."""
    sequences: list[list[int]] = []
    better, worse, group, margin = [], [], [], []
    for g, example in enumerate(examples):
        offset = len(sequences)
        sequences.extend(example.sequences)
        for b, w in example.pairs:
            better.append(offset + b)
            worse.append(offset + w)
            group.append(g)
            margin.append(example.margin)
    ids, attention = right_pad(sequences, pad_id)
    batch = {
        "input_ids": ids,
        "attention_mask": attention,
        "better": torch.tensor(better, dtype=torch.long),
        "worse": torch.tensor(worse, dtype=torch.long),
        "group": torch.tensor(group, dtype=torch.long),
        "margin": torch.tensor(margin, dtype=torch.float32),
    }
    if pack:
        packed = pack_shared_prefix([e.sequences for e in examples], pad_id)
        batch |= {
            "packed_ids": packed.input_ids,
            "packed_positions": packed.position_ids,
            "packed_segments": packed.segments,
            "packed_last": packed.last,
        }
    return batch
