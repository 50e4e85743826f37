"""Loading a causal LM with its tokenizer: dtype, bitsandbytes quantization, peft LoRA, checkpointing."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from rlhf_lightning.models.config import LoraConfig, ModelConfig
from rlhf_lightning.models.embedded import resolve_model_path

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# GPT-2 style configs name their dropouts *pdrop; most others contain "dropout".
_DROPOUT_SUFFIXES = ("dropout", "pdrop", "dropout_prob", "dropout_rate")


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto``: CUDA when available, else the CPU; anything else as torch reads it (``cpu``, ``cuda:1``)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def quiet_transformers() -> None:
    """Warnings only from transformers, no download progress bars, no tokenizer fork warnings."""
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _distinct_pad_token(tokenizer) -> str | None:
    for candidate in ("<|endoftext|>", "<pad>", "<|finetune_right_pad_id|>", tokenizer.unk_token):
        if candidate is None:
            continue
        token_id = tokenizer.convert_tokens_to_ids(candidate)
        is_known = token_id is not None and (token_id != tokenizer.unk_token_id or candidate == tokenizer.unk_token)
        if is_known and token_id != tokenizer.eos_token_id:
            return candidate
    return None


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    """Load a tokenizer and give it a pad token that is not its EOS token when the vocabulary allows.

    Every mask in this project is built from sequence lengths, never from ``ids == pad``, so a pad equal to
    EOS would still be correct; a distinct pad just makes batches easier to read and debug.
    """
    path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.pad_token = _distinct_pad_token(tokenizer) or tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {name_or_path} has no EOS token; completions could never end")
    return tokenizer


def _disable_dropout_in_config(config) -> None:
    for key, value in list(vars(config).items()):
        if isinstance(value, float) and key.endswith(_DROPOUT_SUFFIXES):
            setattr(config, key, 0.0)
    for sub in ("text_config", "decoder"):
        if hasattr(config, sub) and getattr(config, sub) is not None:
            _disable_dropout_in_config(getattr(config, sub))


def disable_dropout(model: nn.Module) -> None:
    """Zero every ``nn.Dropout`` (functional dropouts read the config, zeroed before the model is built)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def keep_4bit_weights_unpacked(model: nn.Module) -> None:
    """Keep bitsandbytes' 4-bit weights in one format on CPU.

    On CPUs with AVX512-BF16, bitsandbytes repacks a ``Linear4bit`` weight for a faster kernel at its first
    inference forward pass and unpacks it whenever ``state_dict()`` is called, that is at every checkpoint.
    The round trip is lossy: each checkpoint would shift the frozen base model (and with it the reference)
    a little, and a run resumed from a checkpoint would not continue the run that wrote it.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _quantization_config(cfg: ModelConfig) -> BitsAndBytesConfig | None:
    if cfg.quantization == "none":
        return None
    if cfg.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quantization,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(cfg.dtype),
    )


def load_causal_lm(
    cfg: ModelConfig, lora: LoraConfig | None, device: torch.device | str | None = None, trainable: bool = True
) -> nn.Module:
    """Load the base model, quantize it if asked, and wrap it with LoRA adapters.

    Returns a ``peft.PeftModel`` when LoRA is on (or ``cfg.adapter`` is given), else the plain model with
    every parameter trainable. The base weights of a LoRA model are frozen. ``trainable=False`` loads for
    inference: every parameter frozen, ``cfg.adapter`` applied if given.
    """
    if trainable and cfg.quantization != "none" and (lora is None or not lora.enabled) and cfg.adapter is None:
        raise ValueError("a quantized base model cannot be trained in full: enable LoRA (lora.enabled: true)")
    path = resolve_model_path(cfg.name_or_path)
    config = AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    logit_scale(config)  # refuses a model whose logits the log-prob path cannot reproduce, before weights load
    if cfg.disable_dropout:
        _disable_dropout_in_config(config)
    kwargs: dict = {}
    quant = _quantization_config(cfg)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": str(device) if device is not None else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(
        path,
        config=config,
        dtype=torch_dtype(cfg.dtype),
        revision=cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        **kwargs,
    )
    if cfg.disable_dropout:
        disable_dropout(model)
    if quant is not None:
        keep_4bit_weights_unpacked(model)
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen embeddings (no need for input grads).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # training; generation passes use_cache=True explicitly

    if cfg.adapter is not None or (trainable and lora is not None and lora.enabled):
        from peft import PeftModel, get_peft_model  # on first use: it imports bitsandbytes, slow to start
    if cfg.adapter is not None:
        model = PeftModel.from_pretrained(model, cfg.adapter, is_trainable=trainable)
        if cfg.disable_dropout:
            disable_dropout(model)  # the adapter's own lora_dropout (0.05 in many recipes) comes with it
    elif trainable and lora is not None and lora.enabled:
        model = get_peft_model(model, lora.to_peft())  # its dropout layers follow lora.dropout
    if not trainable:
        model.requires_grad_(False)
    return model


def is_peft(model: nn.Module) -> bool:
    """Whether ``model`` is a peft wrapper (without importing peft when it was never loaded)."""
    return "peft" in sys.modules and isinstance(model, sys.modules["peft"].PeftModel)


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers ``*ForCausalLM`` inside a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if is_peft(model) else model


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Split a causal LM into the decoder (returns final hidden states) and its LM head."""
    causal_lm = unwrap_causal_lm(model)
    decoder = getattr(causal_lm, causal_lm.base_model_prefix)
    head = causal_lm.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(causal_lm).__name__} has no output embeddings (LM head)")
    return decoder, head


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left- and right-padded rows get the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def final_hidden_states(decoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(b, t, d)`` hidden states after the final norm, with padding-independent positions."""
    out = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    return out.last_hidden_state


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights are counted as stored elements x 2."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def save_model_folder(model: nn.Module, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> Path:
    """Save the adapter (peft format) or the full model, plus the tokenizer, into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class UnsupportedModel(NotImplementedError):
    """A model whose computation the project cannot reproduce (its head or logit transform); the message names
    the model type and why."""


class OutputHead(NamedTuple):
    """What a causal LM's output layer computes from a final hidden state ``h (d,)``:
    ``logits = logit_scale * (h @ weight.T + bias)``, ``weight (v, d)``, ``bias (v,)`` or ``None``."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    logit_scale: float


def output_head(model: nn.Module) -> OutputHead:
    """The output layer ``model`` applies right now, as :class:`OutputHead`.

    Looks through peft's ``modules_to_save`` wrapper exactly as its forward pass does: the active adapter's
    trained copy while adapters are enabled, the base model's head when they are disabled (``use_adapter(model,
    None)``) or the active adapter has no copy. The logit scale is the model family's own (:func:`logit_scale`).

    Raises ``ValueError`` for an adapter layer on the head other than ``modules_to_save`` (LoRA or trainable
    tokens on the head: the chunked log-prob path multiplies by one plain weight matrix), and
    ``UnsupportedModel`` for a head the path cannot reproduce (:func:`logit_scale`; an output embedding inside a
    larger head module, as in remote-code models of that shape).
    """
    causal_lm = unwrap_causal_lm(model)
    head = causal_lm.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(causal_lm).__name__} has no output embeddings (LM head)")
    scale = logit_scale(causal_lm.config)
    if not any(module is head for module in causal_lm.children()):  # e.g. lm_head.decoder after a dense + norm
        raise UnsupportedModel(
            f"{type(causal_lm).__name__}'s output embedding sits inside a larger head, which the chunked log-prob "
            "path does not reproduce; this model is not supported"
        )
    if "peft" in sys.modules:  # else no adapter was ever loaded: a plain head
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils import ModulesToSaveWrapper
        from peft.utils.other import AuxiliaryTrainingWrapper

        if isinstance(head, ModulesToSaveWrapper):
            active = head.active_adapters[0] if head.active_adapters else None
            use_copy = not head.disable_adapters and active in head.modules_to_save
            head = head.modules_to_save[active] if use_copy else head.original_module
        elif isinstance(head, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            raise ValueError(
                f"{type(head).__name__} on the LM head is not supported (the log-prob path applies one plain weight "
                "matrix); train the head in full with lora.modules_to_save: [lm_head] instead"
            )
    return OutputHead(head.weight, getattr(head, "bias", None), scale)


_GRANITE = ("granite", "granite_swa", "granitemoe", "granitemoe_swa", "granitemoehybrid", "granitemoeshared")
_COHERE = ("cohere", "cohere2", "cohere2_moe", "cohere_compass_text")
LOGIT_SCALES: dict[str, Callable[[PretrainedConfig], float]] = {
    **dict.fromkeys(_GRANITE, lambda c: 1.0 / c.logits_scaling),  # logits / logits_scaling
    "minicpm3": lambda c: 1.0 / c.logits_scaling,  # hidden / logits_scaling into a head without bias
    "hyperclovax": lambda c: c.logits_scaling,  # logits * logits_scaling (the opposite of Granite)
    **dict.fromkeys(_COHERE, lambda c: 1.0 if c.logit_scale is None else c.logit_scale),
    "falcon_h1": lambda c: c.lm_head_multiplier,
}
"""Model types whose ``*ForCausalLM`` multiplies the LM head's output by a constant, and that constant."""

SOFT_CAPS = ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap")
"""Config fields of families that squash their logits with ``cap * tanh(logits / cap)`` when set."""
UNSUPPORTED_HEADS = {
    "inkling_text": "cuts its logits to an unpadded vocabulary",
    "inkling2_text": "soft-caps its logits and cuts them to an unpadded vocabulary",
    "electra": "runs a prediction layer between the decoder and the LM head",
    "modernbert-decoder": "runs a decoder layer after the LM head",
    "prophetnet": "predicts several future tokens per position",
    "musicgen": "has one LM head per codebook",
    "musicgen_melody": "has one LM head per codebook",
    "gemma4_assistant": "masks its output embedding",
    "gemma4_unified_assistant": "masks its output embedding",
    **dict.fromkeys(
        (
            "bert",
            "bert-generation",
            "big_bird",
            "camembert",
            "data2vec-text",
            "ernie",
            "megatron-bert",
            "reformer",
            "rembert",
            "roberta",
            "roberta-prelayernorm",
            "roc_bert",
            "roformer",
            "xlm",
            "xlm-roberta",
            "xlm-roberta-xl",
            "xmod",
        ),
        "runs a dense layer and a norm between the decoder and its output embedding",
    ),  # fmt: skip
}
"""Model types whose LM head is not ``decoder output -> one linear layer (times a constant)``, and why."""


def logit_scale(config: PretrainedConfig) -> float:
    """The constant a model family multiplies its LM head's output by (1.0 for most), read from its config.

    The log-prob path applies ``decoder -> linear head`` itself, chunk by chunk (``ops.token_logprobs_from_hidden``),
    so every transform the model's own forward applies after the head must be known here. Raises
    ``UnsupportedModel`` naming the model type for one it cannot reproduce (soft-capped logits: Gemma 2/3,
    RecurrentGemma, xLSTM; heads of another shape): called on the config, before any weight loads.
    """
    model_type = getattr(config, "model_type", "")
    if model_type in UNSUPPORTED_HEADS:
        raise UnsupportedModel(
            f"{model_type} models are not supported: the model {UNSUPPORTED_HEADS[model_type]}, which the chunked "
            "log-prob path does not reproduce"
        )
    try:
        configs = (config, config.get_text_config())  # multimodal configs keep the language model's apart
    except ValueError:  # several candidate text configs
        configs = (config,)
    for field in SOFT_CAPS:
        cap = next((getattr(c, field) for c in configs if getattr(c, field, None)), None)
        if cap:
            raise UnsupportedModel(
                f"{model_type} models soft-cap their logits ({field}: {cap}), which the chunked log-prob path does "
                "not reproduce; this model type is not supported yet"
            )
    scale = LOGIT_SCALES[model_type](config) if model_type in LOGIT_SCALES else 1.0
    return float(scale)
