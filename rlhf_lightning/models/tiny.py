"""Tiny randomly initialised models with a character-level chat tokenizer, for tests and smoke runs.

One token per character makes expected token ids computable by hand: ``"ab"`` is ``[id('a'), id('b')]``.
The chat template has the same ChatML shape as SmolLM2's, with ``<|im_end|>`` as EOS and a distinct pad.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
CHARACTERS = list(string.printable[:95]) + ["\n"]  # digits, letters, punctuation, space, newline
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_char_tokenizer(pad_is_eos: bool = False, eos_ends_turns: bool = True) -> PreTrainedTokenizerFast:
    """The character tokenizer. ``pad_is_eos`` builds it GPT-2 style: ``<|endoftext|>`` is its only special
    token (BOS, EOS and unknown at once), there is no pad token and no chat template.

    ``eos_ends_turns=False`` builds it as a base model's whose chat template closes turns with another token:
    EOS is ``<|endoftext|>``, the template still ends each turn with ``<|im_end|>``, and the pad is a
    ``<pad>`` token appended to the vocabulary (every other id is unchanged)."""
    if pad_is_eos:
        vocab = {tok: i for i, tok in enumerate(["<|endoftext|>"] + CHARACTERS)}
        core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
        core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        core.decoder = decoders.Fuse()
        special = "<|endoftext|>"
        return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=special, eos_token=special, unk_token=special)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS + ([] if eos_ends_turns else ["<pad>"]))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()  # decode("ab") == "ab", not "a b"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>" if eos_ends_turns else "<|endoftext|>",
        pad_token="<|endoftext|>" if eos_ends_turns else "<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"] if eos_ends_turns else ["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    folder: str | Path,
    architecture: Literal["llama", "gpt2"] = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    pad_is_eos: bool = False,
    eos_ends_turns: bool = True,
) -> Path:
    """Write a random-weight causal LM and its char tokenizer to ``folder``; returns the folder.
    ``pad_is_eos`` gives it the GPT-2 style tokenizer, ``eos_ends_turns=False`` one whose EOS is not the chat
    template's end-of-turn token (see :func:`build_char_tokenizer`). The llama's input and output embeddings
    are tied (``tie_word_embeddings``), as SmolLM2's are."""
    tokenizer = build_char_tokenizer(pad_is_eos, eos_ends_turns)
    vocab_size = len(tokenizer)
    bos = tokenizer.bos_token_id if pad_is_eos else tokenizer.convert_tokens_to_ids("<|im_start|>")
    common = dict(
        # The usual 0.02 leaves frozen tied embeddings so small that no LoRA update can make a logit
        # confident (|logit| < ~1.5, loss floor ~3.4); 0.1 starts near uniform and lets adapters learn.
        initializer_range=0.1,
        vocab_size=vocab_size,
        bos_token_id=bos,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if architecture == "llama":
        config = LlamaConfig(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            **common,
        )
    elif architecture == "gpt2":
        # Absolute position embeddings: wrong positions under left padding show up as wrong log-probs.
        config = GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=4, n_positions=512, **common)
    else:
        raise ValueError(f"unknown architecture {architecture!r}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
