"""Sampling: only the configured temperature shapes the distribution, and responses stop on every end token."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf_lightning.data.chat import stop_token_ids
from rlhf_lightning.data.errors import OptionError
from rlhf_lightning.models import load_tokenizer
from rlhf_lightning.models.generation import GenerationConfig, generation_eos_ids, sample_responses, seeded
from rlhf_lightning.models.tiny import CHAT_TEMPLATE


@pytest.fixture(scope="module")
def opinionated_model(tiny_llama, tmp_path_factory):
    """The tiny model with a generation_config.json that would change sampling if it leaked (as Qwen2.5's
    ``repetition_penalty: 1.05`` does) and that names a second EOS id, 'z'. Its final norm is scaled up so
    that its next-token distributions are peaked, like a trained model's, not near uniform."""
    folder = tmp_path_factory.mktemp("opinionated")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        model.model.norm.weight.mul_(4.0)
    tokenizer = load_tokenizer(tiny_llama)
    z = tokenizer.convert_tokens_to_ids("z")
    model.generation_config.update(
        repetition_penalty=1.3, min_new_tokens=4, no_repeat_ngram_size=2, eos_token_id=[2, z]
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_the_models_generation_config_does_not_reach_the_sampler(opinionated_model, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(opinionated_model).eval()
    used = []
    original = type(model)._get_logits_processor

    def spy(self, *args, **kwargs):
        processors = original(self, *args, **kwargs)
        used.append([type(p).__name__ for p in processors])
        return processors

    monkeypatch.setattr(type(model), "_get_logits_processor", spy)
    ids = torch.tensor([[10, 11, 12, 10, 11]])
    config = GenerationConfig(max_new_tokens=6, temperature=0.7)
    sample_responses(model, ids, torch.ones_like(ids), config, [2], pad_token_id=0)
    assert used == [["TemperatureLogitsWarper"]]
    assert model.generation_config.repetition_penalty == 1.3  # set aside while sampling, then put back
    sample_responses(model, ids, torch.ones_like(ids), GenerationConfig(max_new_tokens=2, temperature=0), [2], 0)
    assert used[-1] == []  # greedy: nothing at all


def test_first_tokens_follow_softmax_of_logits_over_temperature(opinionated_model):
    # 20000 one-token responses to one prompt: their frequencies must match softmax(logits / T). The prompt
    # is the model's own greedy continuation, so the tokens it favours next are already in it and a leaked
    # repetition penalty would push them down (and a leaked min_new_tokens would forbid EOS).
    model = AutoModelForCausalLM.from_pretrained(opinionated_model).eval()
    tokenizer = load_tokenizer(opinionated_model)
    seed = torch.tensor([tokenizer("the cat", add_special_tokens=False)["input_ids"]])
    greedy = GenerationConfig(max_new_tokens=12, temperature=0)
    prompt = torch.cat([seed, sample_responses(model, seed, torch.ones_like(seed), greedy, [], 0)], 1)
    temperature, n = 0.7, 20000
    with torch.no_grad():
        logits = model(prompt).logits[0, -1]
    expected = torch.softmax(logits / temperature, -1)
    ids = prompt.expand(n, -1)
    with seeded(0, "cpu"):
        first = sample_responses(model, ids, torch.ones_like(ids), GenerationConfig(1, temperature), [2], 0)[:, 0]
    observed = torch.bincount(first, minlength=expected.numel()).float() / n
    total_variation = 0.5 * (observed - expected).abs().sum().item()
    # what the leaked settings would have sampled from, so the bound below can tell the two apart
    leaked = logits.clone()
    seen = prompt[0].unique()
    leaked[seen] = torch.where(leaked[seen] > 0, leaked[seen] / 1.3, leaked[seen] * 1.3)
    leaked[[2, tokenizer.convert_tokens_to_ids("z")]] = -float("inf")
    leaked_tv = 0.5 * (torch.softmax(leaked / temperature, -1) - expected).abs().sum().item()
    assert total_variation < 0.03, total_variation  # sampling noise at n = 20000 is about 0.01
    assert leaked_tv > 0.1, leaked_tv


def test_stop_tokens_are_eos_generation_config_eos_template_end_of_turn_and_extra(opinionated_model, tmp_path):
    tokenizer = load_tokenizer(opinionated_model)
    model = AutoModelForCausalLM.from_pretrained(opinionated_model)
    z, q = (tokenizer.convert_tokens_to_ids(c) for c in "zq")
    assert stop_token_ids(tokenizer) == [tokenizer.eos_token_id]  # <|im_end|> is EOS and ends a turn
    assert stop_token_ids(tokenizer, generation_eos_ids(model)) == sorted([tokenizer.eos_token_id, z])
    assert stop_token_ids(tokenizer, generation_eos_ids(model), ["q"]) == sorted([tokenizer.eos_token_id, z, q])
    with pytest.raises(OptionError, match="^stop_tokens: 'qq' is 2 tokens for this tokenizer"):
        stop_token_ids(tokenizer, generation_eos_ids(model), ["qq"])
    with pytest.raises(OptionError, match="^--stop_tokens: '' is 0 tokens"):
        stop_token_ids(tokenizer, (), [""], "--stop_tokens")
    with pytest.raises(OptionError, match="'€' is not in this tokenizer's vocabulary"):
        stop_token_ids(tokenizer, (), ["€"])  # it would read as <unk>, which the model does write
    # a Llama-3 style template: turns end with <|eot|>, a special token that is not the tokenizer's EOS
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|eot|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE.replace("<|im_end|>", "<|eot|>")
    eot = tokenizer.convert_tokens_to_ids("<|eot|>")
    assert eot != tokenizer.eos_token_id
    assert stop_token_ids(tokenizer) == sorted([tokenizer.eos_token_id, eot])
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    assert stop_token_ids(tokenizer) == [tokenizer.eos_token_id]  # plain-text turn ends name no token


def test_sampling_inside_seeded_leaves_the_global_random_state_alone(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    ids = torch.tensor([[10, 11, 12]] * 4)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with seeded(7, "cpu"):
        a = sample_responses(model, ids, torch.ones_like(ids), GenerationConfig(8, 1.0), [2], 0)
    assert torch.equal(torch.rand(3), expected)
    with seeded(7, "cpu"):
        b = sample_responses(model, ids, torch.ones_like(ids), GenerationConfig(8, 1.0), [2], 0)
    assert torch.equal(a, b)


def test_a_static_kv_cache_samples_what_the_dynamic_one_does(opinionated_model):
    model = AutoModelForCausalLM.from_pretrained(opinionated_model).eval()
    ids = torch.tensor([[0, 0, 10, 11], [12, 13, 14, 15]])  # left padding in one row
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    out = {}
    for cache in ("dynamic", "static"):
        with seeded(3, "cpu"):
            out[cache] = sample_responses(model, ids, mask, GenerationConfig(12, 0.7, cache=cache), [2], 0)
    assert torch.equal(out["static"], out["dynamic"]) and out["static"].shape == (2, 12)
    with pytest.raises(ValueError, match="cache must be 'dynamic' or 'static'"):
        GenerationConfig(cache="paged")
