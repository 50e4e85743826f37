"""Model loading: the embedded default, dtype, bitsandbytes quantization, peft LoRA, generation."""

from rlhf_lightning.models.config import LoraConfig, ModelConfig
from rlhf_lightning.models.embedded import embedded_model_dir, resolve_model_path
from rlhf_lightning.models.generation import GenerationConfig, generate
from rlhf_lightning.models.loading import (
    count_parameters,
    decoder_and_head,
    final_hidden_states,
    load_causal_lm,
    load_tokenizer,
    position_ids_from_mask,
    resolve_device,
    save_model_folder,
)
from rlhf_lightning.models.run_folder import RunFolder, RunInfo

__all__ = [
    "GenerationConfig",
    "LoraConfig",
    "ModelConfig",
    "count_parameters",
    "decoder_and_head",
    "embedded_model_dir",
    "final_hidden_states",
    "generate",
    "load_causal_lm",
    "load_tokenizer",
    "position_ids_from_mask",
    "resolve_device",
    "resolve_model_path",
    "RunFolder",
    "RunInfo",
    "save_model_folder",
]
