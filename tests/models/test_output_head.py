"""The chunked log-prob path computes what each model family computes: a constant logit scale (Granite, Cohere,
Falcon-H1, ...) is applied, and a transform it cannot reproduce (soft caps, heads of another shape) is refused by
name before any weight loads. The head's adapter handling is tested in test_adapters.py."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
import torch
import transformers
from transformers import CONFIG_MAPPING, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from rlhf_lightning.models import ModelConfig, load_causal_lm
from rlhf_lightning.models.adapters import Role, response_logprobs
from rlhf_lightning.models.loading import LOGIT_SCALES, SOFT_CAPS, UNSUPPORTED_HEADS, output_head

TINY = dict(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
FAMILY_OPTIONS = {
    "minicpm3": dict(
        num_key_value_heads=4,
        dim_model_base=8,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=8,
        q_lora_rank=16,
        kv_lora_rank=16,
    ),  # fmt: skip
    "granitemoehybrid": dict(mamba_n_heads=4, mamba_d_state=8, mamba_chunk_size=16, layer_types=["mamba", "attention"]),
    "cohere_compass_text": dict(
        layer_types=["full_attention"] * 2,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0}},
    ),
}
SCALES = dict(logits_scaling=4.0, logit_scale=0.25, lm_head_multiplier=3.0)
"""Non-trivial values for every scale a family reads (the defaults are often 1)."""


def tiny_model_folder(model_type: str, folder: Path, weights: bool = True, **overrides) -> Path:
    config = CONFIG_MAPPING[model_type](**{**TINY, **FAMILY_OPTIONS.get(model_type, {}), **overrides})
    if not weights:
        config.save_pretrained(folder)
        return folder
    for name, value in SCALES.items():
        if name in vars(config):
            setattr(config, name, value)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model_type", sorted(LOGIT_SCALES))
def test_scaled_logit_families_give_the_models_own_log_probs(model_type, tmp_path):
    folder = tiny_model_folder(model_type, tmp_path)
    model = load_causal_lm(ModelConfig(name_or_path=str(folder)), None, trainable=False).eval()
    assert output_head(model).logit_scale != 1.0  # the family's transform is exercised, not a default of 1
    sequences = torch.randint(3, 96, (2, 7))
    attention_mask = torch.ones_like(sequences)
    response_mask = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad():
        expected = torch.log_softmax(model(input_ids=sequences).logits.float() / 0.7, dim=-1)
        expected = expected[:, 3:-1].gather(-1, sequences[:, 4:, None]).squeeze(-1) * response_mask
        got = response_logprobs(Role(model, None), sequences, attention_mask, response_mask, temperature=0.7)
    torch.testing.assert_close(got.logprobs, expected, atol=1e-5, rtol=1e-5)


REFUSED = {
    "gemma2": {}, "gemma3_text": {"final_logit_softcapping": 30.0}, "recurrent_gemma": {}, "xlstm": {},
    "vaultgemma": {}, "nanochat": {}, "electra": {}, "prophetnet": {}, "musicgen": {},
}  # fmt: skip


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_models_whose_logits_the_path_cannot_reproduce_are_refused_by_name_before_weights_load(model_type, tmp_path):
    config = CONFIG_MAPPING[model_type](**REFUSED[model_type])
    config.save_pretrained(tmp_path)  # a folder without weights: a refusal after loading would be another error
    with pytest.raises(NotImplementedError, match=f"^{model_type} models"):
        load_causal_lm(ModelConfig(name_or_path=str(tmp_path)), None, trainable=False)


_HEAD_CALL = re.compile(
    r"^(lm_)?logits = self\.(\w+)\((hidden_states(\[:, slice_indices, :\]|\.to\([^()]*\))?|outputs\[0\])\)"
    r"(\.float\(\)|\.contiguous\(\))?$"
)
_BENIGN = re.compile(
    r"^hidden_states = (\w*outputs(\[0\]|\.last_hidden_state)|slice_logits_to_keep\(.*\)|model_output\..*)$"
    r"|^(lm_)?logits = (lm_)?logits\.(float|contiguous)\(\)$"
)


def _logit_statements(cls: type) -> list[str]:
    """The statements of ``cls.forward`` that compute the logits or the hidden states fed to the head, one line
    each, in order."""
    tree = ast.parse(inspect.cleandoc("\n" + inspect.getsource(cls.forward)))
    statements = sorted(
        (s for s in ast.walk(tree) if isinstance(s, (ast.Assign, ast.AugAssign))), key=lambda s: s.lineno
    )
    lines = (" ".join(ast.unparse(s).split()) for s in statements)
    return [line for line in lines if re.match(r"^(lm_)?logits\b|^hidden_states\b", line)]


def _output_embedding_attribute(cls: type) -> str | None:
    """The attribute ``get_output_embeddings`` returns (``lm_head`` by default); ``None`` for a nested one."""
    source = " ".join(inspect.getsource(cls.get_output_embeddings).split())
    if "return self.lm_head" in source and 'if not hasattr(self, "lm_head")' in source:
        return "lm_head"
    found = re.search(r"return self\.(\w+)$", source)
    return found.group(1) if found else None


def _declares_soft_cap(model_type: str) -> bool:
    config = CONFIG_MAPPING[model_type]()
    return any(hasattr(c, field) for c in (config, config.get_text_config()) for field in SOFT_CAPS)


def _reproduced(model_type: str, statements: list[str], head_attribute: str | None) -> bool:
    """Whether a forward is ``decoder output -> self.<head_attribute>`` and nothing else, or its only other
    steps are a ``tanh`` soft cap read from a config field that :func:`logit_scale` refuses whenever it is set."""
    calls = [m for m in map(_HEAD_CALL.match, statements) if m]
    if len(calls) != 1 or calls[0].group(2) != head_attribute:
        return False
    rest = [s for s in statements if not _HEAD_CALL.match(s) and not _BENIGN.match(s)]
    return not rest or (any("tanh" in s or "soft_cap(" in s for s in rest) and _declares_soft_cap(model_type))


def test_every_family_transformers_ships_has_a_plain_head_or_is_known():
    """A family added to transformers with a new logit transform fails here until it is applied or refused."""
    unknown = {}
    for model_type, class_name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        if model_type in LOGIT_SCALES or model_type in UNSUPPORTED_HEADS:
            continue
        try:
            cls = getattr(transformers, class_name)
            statements, head = _logit_statements(cls), _output_embedding_attribute(cls)
        except (ImportError, AttributeError, OSError, TypeError):
            continue  # needs an optional dependency, or has no Python source to read
        if not _reproduced(model_type, statements, head):
            unknown[model_type] = statements
    assert not unknown, f"families whose head is neither plain nor in LOGIT_SCALES / UNSUPPORTED_HEADS: {unknown}"


def test_the_known_lists_name_real_causal_lm_families():
    for model_type in [*LOGIT_SCALES, *UNSUPPORTED_HEADS]:
        assert model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, model_type
