"""``rlhf-lightning generate``: sample K candidate responses per prompt from a policy into a labelling database,
for people (``rlhf-lightning label``) or a judge (``rlhf-lightning label judge``) to rank:

    rlhf-lightning generate --policy runs/quickstart/sft/final --prompts builtin:prompts.jsonl \\
        --database runs/labels.sqlite --num_candidates 4 --max_prompts 50

The policy is a run's ``final`` folder (SFT or PPO), a Hugging Face model folder or hub id, or ``embedded``.
Each candidate records the policy and the sampling settings that wrote it. Identical responses to the same
prompt in a round are stored once, empty ones not at all. Prompts are sampled ``batch_size`` at a time, each
batch stored in one transaction: an interrupted run started again with the same options continues with the
prompts it had not stored, with the candidates an uninterrupted run gives, and a run with more prompts
(``--max_prompts``) samples only the new ones. Another policy or other settings append to the database
(candidates for a prompt join its item until someone ranks it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from rlhf_lightning.commands.evaluate import load_prompts
from rlhf_lightning.data.chat import ChatTemplateMode, stop_token_ids, text_rows_as_chat
from rlhf_lightning.data.errors import OptionError
from rlhf_lightning.data.labels import GenerationCounts, LabelStore, prompt_key
from rlhf_lightning.models.adapters import RoleLoader, sample_from_role
from rlhf_lightning.models.config import DType, ModelConfig, Quantization
from rlhf_lightning.models.generation import GenerationConfig, generation_eos_ids, left_pad, seeded
from rlhf_lightning.models.loading import load_tokenizer, resolve_device
from rlhf_lightning.models.run_folder import RunFolder, require_model

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "runs/labels.sqlite"


def generate_candidates(
    policy: str = "embedded",
    prompts: str | list[str] = "builtin:prompts.jsonl",
    database: str = DEFAULT_DATABASE,
    num_candidates: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    round: int = 1,
    first_prompt: int = 0,
    max_prompts: int | None = None,
    val_fraction: float = 0.0,
    split_seed: int = 0,
    max_length: int = 256,
    overlong: Literal["truncate", "drop"] = "drop",
    chat_template: ChatTemplateMode | None = None,
    stop_tokens: list[str] | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: DType = "float32",
    quantization: Quantization = "none",
    progress: bool = True,
) -> GenerationCounts:
    """Sample ``num_candidates`` responses to each prompt from ``policy`` and store them in ``database``.

    Args:
        policy: A run's ``final`` folder (SFT or PPO), a Hugging Face model folder or hub id, or ``embedded``.
        prompts: Prompts in the PPO stage's formats (a file, ``builtin:NAME``, ``hf:OWNER/NAME``).
        database: The labelling database (created when missing).
        num_candidates: Responses sampled per prompt (K); duplicates and empty ones are not stored.
        temperature: Sampling temperature (> 0: candidates must differ to be worth ranking).
        top_p: Nucleus sampling (1 disables it).
        max_new_tokens: Longest response, in tokens.
        seed: Seed of the sampling; a batch whose first prompt is the file's ``i``-th is sampled with ``seed + i``.
        round: The round the candidates belong to (the pipeline's rounds; 1 by default).
        first_prompt: Skip this many prompts first (of the training split), e.g. to take new prompts each round.
        max_prompts: Use at most this many prompts after ``first_prompt``.
        val_fraction: Leave out the held-out split a PPO run with the same prompts, fraction and ``split_seed``
            evaluates on (0 uses every prompt), so labelled prompts never overlap the evaluation's.
        split_seed: Seed of that split.
        max_length: Longest prompt in tokens.
        overlong: What happens to a longer prompt: ``drop`` or ``truncate``.
        chat_template: How text prompts are formatted (``auto``, ``always``, ``never``); default: as the
            policy's run formatted them (``auto`` for a model folder).
        stop_tokens: More tokens that end a response, as PPO's ``rollout.stop_tokens``.
        batch_size: Prompts per batch (each sampled ``num_candidates`` times in one batch, stored at once).
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        dtype: Weight dtype of the base model.
        quantization: Load the base model 4-bit / 8-bit.
        progress: Show a progress bar.

    Returns:
        Counts: prompts, candidates stored, duplicates and empty responses left out, new items.
    """
    if num_candidates < 2:
        raise OptionError(
            f"--num_candidates must be >= 2 (candidates are ranked against each other), got {num_candidates}"
        )
    if temperature <= 0:
        raise OptionError(f"--temperature must be > 0: greedy decoding repeats one answer, got {temperature}")
    if batch_size < 1 or first_prompt < 0 or round < 1:
        raise OptionError("--batch_size and --round must be >= 1, --first_prompt >= 0")
    require_model(policy, "--policy")
    device = resolve_device(device)
    tokenizer = load_tokenizer(RunFolder(policy).tokenizer_source)
    chat_template = chat_template or RunFolder(policy).chat_template
    text_rows_as_chat(tokenizer, chat_template, "--chat_template")
    stop_token_ids(tokenizer, (), stop_tokens or [], "--stop_tokens")  # refused before any weight is loaded
    examples = load_prompts(
        tokenizer, prompts, val_fraction, split_seed, max_length, None, overlong, chat_template, split="train"
    )
    examples = examples[first_prompt:][:max_prompts]
    if val_fraction == 0:
        log.warning(
            "generate: --val_fraction 0 labels prompts from the whole file; give the PPO stage's val_fraction (and "
            "split_seed) to keep its held-out evaluation prompts out of the labels"
        )
    if not examples:
        raise OptionError(f"no prompts to generate for in {prompts} (first_prompt {first_prompt})")
    settings = {
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "num_candidates": num_candidates,
        "chat_template": chat_template,
        "stop_tokens": stop_tokens or [],
    }
    # A run is its policy, prompts and settings; which prompts (first_prompt, max_prompts) and how many at a time
    # (batch_size) may change between attempts: each prompt is stored once per run.
    source = dict(prompts=prompts, val_fraction=val_fraction, split_seed=split_seed, max_length=max_length,
                  overlong=overlong, round=round)  # fmt: skip
    run = hashlib.sha1(json.dumps([_identity(policy), settings, source], sort_keys=True).encode()).hexdigest()[:16]
    store = LabelStore(database, create=True)
    done = store.done_prompts(run)
    todo = [(first_prompt + i, e) for i, e in enumerate(examples) if prompt_key(*_prompt_of(e)) not in done]
    total = GenerationCounts()
    if not todo:
        log.info(f"generate: all {len(examples)} prompts were stored by an earlier run with these options")
        return total
    # built first: a bad option is refused before the model loads
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    role = RoleLoader(ModelConfig(dtype=dtype, quantization=quantization), device).load(policy, "policy")
    stops = stop_token_ids(tokenizer, generation_eos_ids(role.model), stop_tokens or [], "--stop_tokens")
    pad = tokenizer.pad_token_id
    bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc="generate", unit="prompt",
               disable=not progress)  # fmt: skip
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        ids, mask = left_pad([e.input_ids for _, e in chunk for _ in range(num_candidates)], pad, device)
        with seeded(seed + chunk[0][0], device):  # by the first prompt's place in the file: resumes reproduce
            sequences, _, response_mask, ended = sample_from_role(role, ids, mask, config, stops, pad)
        responses = sequences[:, ids.shape[1] :]
        texts = [  # each with whether it ended with a stop token: a cut-off answer is stored as one
            (tokenizer.decode(row[keep].tolist(), skip_special_tokens=True).strip(), bool(end))
            for row, keep, end in zip(responses, response_mask, ended)
        ]
        rows = []
        for i, (_, example) in enumerate(chunk):
            prompt, tools = _prompt_of(example)
            rows.append((prompt, tools, example.display, texts[i * num_candidates : (i + 1) * num_candidates]))
        counts = store.add_candidates(run, round, policy, settings, rows)
        for name in ("prompts", "candidates", "duplicates", "empty", "new_items", "cut_off"):
            setattr(total, name, getattr(total, name) + getattr(counts, name))
        bar.update(len(chunk))
    bar.close()
    log.info(
        f"generate: {total.candidates} candidates for {total.prompts} prompts stored in {database} "
        f"({total.duplicates} duplicates and {total.empty} empty responses left out; {total.new_items} new items). "
        f"Rank them: rlhf-lightning label {database}"
    )
    if total.cut_off:
        log.warning(
            f"generate: {total.cut_off} of the {total.candidates} candidates reached --max_new_tokens "
            f"{max_new_tokens} before ending; they are marked cut off, and the reward stage leaves them out by "
            "default (data.cut_off). A larger --max_new_tokens leaves fewer cut off"
        )
    return total


def _identity(policy: str) -> str:
    path = Path(policy)
    return str(path.resolve()) if path.exists() else policy


def _prompt_of(example) -> tuple[str | list, list | None]:
    """The prompt as its row gave it (text or messages) and its tools, to store and export again."""
    row = example.row or {}
    prompt = row.get("prompt", row.get("messages", example.display))
    return prompt, row.get("tools")
